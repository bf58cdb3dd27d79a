"""The engine on a GPU, in one prepared run of a few minutes (issue #21, item 5; docs/performance.md).

For each backend the machine has (ONNX Runtime's CUDA provider, torch on CUDA) and, in the same run, the CPU
(ONNX Runtime, the threads given): the impute graph's throughput at 100 samples for 1 to 10,000 rows (rows/s, one
sampler call per chunk of rows, the chunk as large as `--chains-per-call` allows), the single-row p50 through the
whole engine (prepare, run, finish), and the device's measured matrix-product rate (a 4096 x 4096 float32 matmul,
torch; the CPU's through numpy), so every figure can be read against the floor measured in the same run.

    python -m benchmarks.gpu --out gpu.json                      # builds a small demo artifact first
    python -m benchmarks.gpu --artifact models/diabetes --out gpu.json

Backends that are not there are reported as such, not skipped silently. CI never runs this (no GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROWS = (1, 10, 100, 1000, 10_000)
SAMPLES = 100


def matmul_gflops(device: str, n: int = 4096, reps: int = 10) -> float:
    """float32 n x n matmul rate on `device` ("cpu" via numpy, "cuda" via torch), GFLOP/s (best of reps)."""
    if device == "cpu":
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        best = min(_timed(lambda: a @ a) for _ in range(reps))
    else:
        import torch

        a = torch.randn(n, n, device="cuda")
        torch.cuda.synchronize()

        def run():
            a @ a
            torch.cuda.synchronize()

        run()
        best = min(_timed(run) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(artifact: Path, backend: str, device: str, threads: int, chains_per_call: int, seconds: float) -> dict:
    from hhvaem.app.engine import Engine
    from hhvaem.app.engine.queries import ImputeQuery

    engine = Engine(artifact, backend=backend, device=device, threads=threads)
    engine.chains_per_call = chains_per_call
    rng = np.random.default_rng(0)
    d = len(engine.schema.features)
    out: dict = {"backend": engine.backend_name, "rows_per_s": {}}
    for rows in ROWS if device != "cpu" else ROWS[:4]:
        x = rng.standard_normal((rows, d)).astype(np.float32)
        mask = (rng.random((rows, d)) < 0.5).astype(np.float32)
        empty = np.zeros((rows, 0), np.float32)
        feeds = engine.feeds(x, mask, empty, empty, SAMPLES, rng)
        engine.run_graph("impute", feeds)  # warm-up (CUDA kernels, allocator)
        times, started = [], time.perf_counter()
        while time.perf_counter() - started < seconds or len(times) < 3:
            times.append(_timed(lambda feeds=feeds: engine.run_graph("impute", feeds)))
        out["rows_per_s"][str(rows)] = round(rows / statistics.median(times), 1)
    row = {"age": 59, "bmi": 32.1} if "age" in engine.feature_index else {}
    latencies = []
    for i in range(30):

        def answer(seed=i):
            prepared = ImputeQuery([row], SAMPLES, seed=seed).prepare(engine)
            return prepared.finish(engine.run_graph(prepared.graph, prepared.feeds))

        latencies.append(_timed(answer))
    out["one_row_p50_ms"] = round(1000 * statistics.median(latencies[5:]), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", type=Path, default=None, help="default: a small demo model, built first")
    ap.add_argument("--out", type=Path, default=Path("gpu.json"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for the CPU figures")
    ap.add_argument("--chains-per-call", type=int, default=1_000_000, help="GPU: chains per sampler call")
    ap.add_argument("--seconds", type=float, default=2.0, help="timing per figure")
    args = ap.parse_args()
    artifact = args.artifact
    if artifact is None:
        from hhvaem.training.demo import build_demo

        artifact = Path(tempfile.mkdtemp()) / "diabetes"
        build_demo(artifact, steps=150)
    result: dict = {
        "machine": f"{platform.node()} ({os.cpu_count()} cores)",
        "load_before": round(os.getloadavg()[0], 2),
        "samples": SAMPLES,
        "cpu_matmul_gflops": round(matmul_gflops("cpu"), 1),
        "backends": [],
    }
    result["cpu"] = measure(artifact, "onnx", "cpu", args.threads, 2048, args.seconds)
    import onnxruntime

    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        result["device"] = torch.cuda.get_device_name(0)
        result["cuda_matmul_gflops"] = round(matmul_gflops("cuda"), 1)
    else:
        result["device"] = "none: torch sees no CUDA device"
    for backend, ok in (
        ("onnx", "CUDAExecutionProvider" in onnxruntime.get_available_providers()),
        ("torch", has_cuda),
    ):
        if not ok:
            result["backends"].append({"backend": f"{backend}:cuda", "missing": True})
            continue
        result["backends"].append(measure(artifact, backend, "cuda", 0, args.chains_per_call, args.seconds))
    result["load_after"] = round(os.getloadavg()[0], 2)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
