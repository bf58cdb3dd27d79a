"""Where the exported sampler runs: ONNX Runtime (default) or torch (optional reference / GPU backend).

Both take the same feeds (data and every random number, as numpy arrays) and return
(eps, features, target, acceptance); the numpy post-processing is shared, so for the same
noise the two backends give the same samples (tested).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from hhvaem.model.io.artifact import CHECKPOINT, ArtifactError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


class Backend(Protocol):
    name: str  # e.g. "onnxruntime:CPUExecutionProvider", "torch:cuda"
    inputs: tuple[str, ...]

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]: ...


class OnnxBackend:
    def __init__(self, graph: Path, device: str = "auto", threads: int = 0):
        import onnxruntime as ort

        available = ort.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise ArtifactError(
                "device 'cuda' asked for, but this onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}; install onnxruntime-gpu)"
            )
        use_cuda = device in ("cuda", "auto") and "CUDAExecutionProvider" in available
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        if threads > 0:
            opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(graph), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
            raise ArtifactError(f"{graph}: ONNX Runtime cannot load the graph ({e})") from None
        self.name = f"onnxruntime:{self.session.get_providers()[0]}"
        self.inputs = tuple(i.name for i in self.session.get_inputs())

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        return tuple(self.session.run(None, {k: feeds[k] for k in self.inputs}))


class TorchBackend:
    """The same graph in torch, from the artifact's checkpoint (CPU, or CUDA when present)."""

    def __init__(self, artifact: Path, device: str = "auto", threads: int = 0):
        try:
            import torch
        except ImportError:
            raise ArtifactError("the torch backend needs torch installed (pip install 'hhvaem[train]')") from None
        from hhvaem.model.export import PredictiveGraph, noise_inputs
        from hhvaem.model.hhvaem import HHVAEM

        if device == "cuda" and not torch.cuda.is_available():
            raise ArtifactError("device 'cuda' asked for, but torch sees no CUDA device")
        self.device = torch.device("cuda" if device in ("cuda", "auto") and torch.cuda.is_available() else "cpu")
        if threads > 0:
            torch.set_num_threads(threads)
        ckpt = torch.load(Path(artifact) / CHECKPOINT, map_location="cpu", weights_only=True)
        model = HHVAEM.from_checkpoint(ckpt).to(self.device)
        self.graph = PredictiveGraph(model).eval()
        self.name = f"torch:{self.device.type}"
        self.inputs = ("x", "mask", "y", "y_mask", *noise_inputs(model))
        self._torch = torch

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        torch = self._torch
        with torch.inference_mode():
            args = [torch.from_numpy(feeds[k]).to(self.device) for k in self.inputs]
            return tuple(t.cpu().numpy() for t in self.graph(*args))
