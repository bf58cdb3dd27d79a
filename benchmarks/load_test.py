"""Load test of the HTTP service on loopback, against the engine alone on the same cores, in one run.

  python -m benchmarks.load_test ARTIFACT_DIR [--requests 300] [--seconds 20] [--json FILE]

Starts the service (uvicorn, one process, SQLite + in-process sessions unless --redis) on a free loopback port
with ARTIFACT_DIR registered, then for single-row impute, predict and next-features (100 posterior samples each)
sends requests at concurrency 1, 8 and 32 (bounded by --requests and --seconds per level) and records requests/s,
p50 and p99. In the same run it times the engine alone (no HTTP): one request at a time (the service's overhead
at concurrency 1 is the ratio) and its best batched throughput on all cores (one sampler call of `--batch` rows
per worker thread, as many workers as cores, as the dynamic batcher runs them). Targets (docs/performance.md):
HTTP overhead <= 20 % at concurrency 1 for every route; throughput at 32 >= 0.8 of the engine's best batched
throughput; p99 at 32 <= 5x the single-request p50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from hhvaem.app.core.config import Settings

ROWS = [
    {"age": 59, "sex": 2, "bmi": 32.1, "blood_pressure": 101},
    {"age": 48, "sex": 1, "bmi": 21.6},
    {"age": 72, "bmi": 30.5, "blood_pressure": 93, "hdl": 45},
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000.0


def _rows_for(features: set[str]) -> list[dict]:
    rows = [{k: v for k, v in r.items() if k in features} for r in ROWS]
    return [r for r in rows if r] or [{}]


def start_service(artifact: Path, workdir: Path, redis_url: str | None) -> tuple[subprocess.Popen, str]:
    models = workdir / "models"
    models.mkdir()
    shutil.copytree(artifact, models / artifact.name)
    port = _free_port()
    env = {
        **os.environ,
        "HHVAEM_DATA_DIR": str(workdir / "data"),
        "HHVAEM_MODELS_DIR": str(models),
        "HHVAEM_LOG_LEVEL": "WARNING",
        "HHVAEM_REDIS_URL": redis_url or "",
    }
    env.pop("REDIS_URL", None)
    cmd = [sys.executable, "-m", "hhvaem.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("service did not become ready within 120 s")


async def _level(client, url, bodies, concurrency: int, max_requests: int, max_seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    issued = 0
    started = time.perf_counter()

    async def worker(w: int):
        nonlocal issued, errors
        while issued < max_requests and time.perf_counter() - started < max_seconds:
            body = bodies[issued % len(bodies)]
            issued += 1
            t = time.perf_counter()
            r = await client.post(url, json=body)
            latencies.append(time.perf_counter() - t)
            errors += r.status_code != 200

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    wall = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / wall,
        "p50_ms": _pct(latencies, 50),
        "p99_ms": _pct(latencies, 99),
    }


async def http_figures(base, name, workloads, levels, max_requests, max_seconds) -> dict:
    out: dict = {}
    limits = httpx.Limits(max_connections=max(levels) + 4)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        for work, (path, bodies) in workloads.items():
            await _level(client, f"/v1/models/{name}/{path}", bodies, 1, 5, 10)  # warm-up
            out[work] = [
                await _level(client, f"/v1/models/{name}/{path}", bodies, c, max_requests, max_seconds) for c in levels
            ]
    return out


def engine_figures(artifact: Path, workloads: dict, repeats: int, batch: int, seconds: float) -> dict:
    """Per route: the engine's single-request latency, and its best batched throughput (rows/s) on all cores."""
    from concurrent.futures import ThreadPoolExecutor

    from hhvaem.app.engine import Engine

    engine = Engine(artifact, threads=1)  # as the service runs it (HHVAEM_THREADS default)
    answer = {
        "impute": lambda b, n=1: engine.impute(b["rows"] * n, samples=b["samples"]),
        "predict": lambda b, n=1: engine.predict(b["rows"] * n, samples=b["samples"]),
        "next_features": lambda b, n=1: [engine.next_features(b["row"], samples=b["samples"]) for _ in range(n)],
    }
    out = {}
    for work, (_, bodies) in workloads.items():
        times = []
        for i in range(repeats + 5):
            t = time.perf_counter()
            answer[work](bodies[i % len(bodies)])
            if i >= 5:
                times.append(time.perf_counter() - t)
        out[work] = {"p50_ms": _pct(times, 50), "p99_ms": _pct(times, 99), "rps": len(times) / sum(times)}
    # best batched: `batch` rows per sampler call, one call per worker thread at a time, for `seconds`
    workers = os.cpu_count() or 1
    for work in ("impute", "predict"):
        body = workloads[work][1][0]
        done = [0] * workers
        stop = time.perf_counter() + seconds

        def worker(w: int, work=work, body=body, stop=stop, done=done) -> None:
            while time.perf_counter() < stop:
                answer[work](body, batch)
                done[w] += batch

        t0 = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(worker, range(workers)))
        out[work]["batched_rows_per_s"] = sum(done) / (time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--requests", type=int, default=300, help="most requests per concurrency level")
    ap.add_argument("--batch", type=int, default=20, help="rows per call for the engine's batched throughput")
    ap.add_argument("--seconds", type=float, default=20.0, help="most seconds per concurrency level")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--redis", default=None, help="Redis URL for sessions (default: in-process)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    manifest = json.loads((args.artifact / "manifest.json").read_text())
    features = {c["name"] for c in manifest["schema"]["features"]}
    rows = _rows_for(features)
    workloads = {
        "impute": ("impute", [{"rows": [r], "samples": args.samples} for r in rows]),
        "predict": ("predict", [{"rows": [r], "samples": args.samples} for r in rows]),
        "next_features": ("next-features", [{"row": r, "samples": args.samples} for r in rows]),
    }
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        engine = engine_figures(args.artifact, workloads, min(args.requests, 100), args.batch, min(args.seconds, 10))
        proc, base = start_service(args.artifact, Path(tmp), args.redis)
        try:
            http = asyncio.run(http_figures(base, manifest["name"], workloads, levels, args.requests, args.seconds))
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    report = {
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "batch_window_ms": float(os.environ.get("HHVAEM_BATCH_WINDOW_MS") or Settings().batch_window_ms),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "settings": {"samples": args.samples, "requests": args.requests, "seconds": args.seconds, "levels": levels},
        "engine": engine,
        "http": http,
        "checks": {},
    }
    print(f"commit {report['commit']}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}, {args.samples} samples")
    print("| work | concurrency | req/s | p50 ms | p99 ms | engine p50 ms | HTTP overhead |")
    print("|---|---|---|---|---|---|---|")
    for work, rows_ in http.items():
        e = engine[work]
        for r in rows_:
            over = r["p50_ms"] / e["p50_ms"] - 1 if r["concurrency"] == 1 else None
            print(
                f"| {work} | {r['concurrency']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{e['p50_ms']:.1f} | {'' if over is None else f'{over:+.0%}'} |"
            )
        one, top = rows_[0], rows_[-1]
        checks = {
            "overhead_at_1": one["p50_ms"] / e["p50_ms"] - 1,
            "throughput_ratio": top["rps"] / one["rps"],
            "p99_over_single_p50": top["p99_ms"] / one["p50_ms"],
        }
        if "batched_rows_per_s" in e:
            checks["throughput_vs_engine_batched"] = top["rps"] / e["batched_rows_per_s"]
        report["checks"][work] = checks
        vs = checks.get("throughput_vs_engine_batched")
        print(
            f"{work}: overhead at 1 = {checks['overhead_at_1']:+.0%} (target <= +20%); throughput at "
            f"{top['concurrency']} = {checks['throughput_ratio']:.1f}x that at 1"
            + (f", {vs:.2f} of the engine's best batched (target >= 0.8)" if vs is not None else "")
            + f"; p99 at {top['concurrency']} = {checks['p99_over_single_p50']:.1f}x single p50 (target <= 5x)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
