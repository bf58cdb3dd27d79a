"""HH-VAEM model library: pure PyTorch, no web, no files.

`model.schema` and `model.preprocessing` use numpy only, so the serving side can
import them without torch.
"""
