"""Fixtures shared by the engine, service and browser tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_artifact(tmp_path_factory) -> str:
    """A small demo model (scikit-learn diabetes, raw units), trained once per test run (~30 s)."""
    import torch

    from training.demo import build_demo

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("artifacts") / "diabetes"
    build_demo(out, steps=150, seed=0)
    torch.set_num_threads(threads)
    return str(out)
