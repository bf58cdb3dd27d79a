"""Fixtures shared by the engine, service and browser tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_artifact(tmp_path_factory) -> str:
    """A small demo model (scikit-learn diabetes, raw units), trained once per test run (~30 s).

    HHVAEM_TEST_ARTIFACT points the tests at an existing demo artifact instead (e.g. the full
    2000-step one, to make the README's screenshots with a well-trained model).
    """
    import os

    import torch

    if os.environ.get("HHVAEM_TEST_ARTIFACT"):
        return os.environ["HHVAEM_TEST_ARTIFACT"]

    from hhvaem.training.demo import build_demo

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("artifacts") / "diabetes"
    build_demo(out, steps=150, seed=0)
    torch.set_num_threads(threads)
    return str(out)
