"""Soak: the service as deployed (a real process on PostgreSQL and Redis) under steady mixed traffic for a long
while; prints 5xx, lost session writes, the service's memory over time, and another caller's latency while a
session at its cap is read in a loop (issue #22).

  python -m benchmarks.soak ARTIFACT_DIR [--minutes 15] [--workers 12] [--probe-requests 300] [--json FILE]

Everything is private and torn down afterwards (`benchmarks/faults.py` provides the parts): a redis-server on a
free port, a PostgreSQL schema of its own, the service started with `uvicorn ... --factory` and the service's
HTTP protocol. The traffic, from `--workers` concurrent clients: each keeps a questionnaire session and answers it
again and again (every acknowledged answer is recorded; past the session cap an answer is a 4xx, counted),
sends single-row predictions, imputations and next-feature questions, and polls a batch job submitted at the start.
The service's resident memory (RSS, /proc) is sampled every second with the number of requests answered so far;
the report gives its growth per 1,000 requests in the first and the second half (a leak keeps growing, a warming
cache levels off). At the end every session is read back: an acknowledged answer that is missing is a lost write.

Then the session-size check: one session is filled to `HHVAEM_SESSION_MAX_OBSERVATIONS` answers, and a probe
client's single-row predictions are timed alone and while `--readers` clients (default 1, as in the issue) fetch
that session in a loop; target: the probe's p99 with the readers at most 2x its p99 alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.faults import ROW, Load, Redis, Service, _submit_job, _wait_job, pg_schema, report


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Memory:
    """RSS samples of a process, each with the number of requests answered by then."""

    def __init__(self, pid: int, load: Load):
        self.pid, self.load, self.samples = pid, load, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            answered = sum(c["requests"] for c in self.load.counts.values())
            self.samples.append((answered, rss_mib(self.pid)))

    def __enter__(self) -> Memory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        (r0, m0), (r2, m2) = self.samples[0], self.samples[-1]
        r1, m1 = self.samples[len(self.samples) // 2]
        per_k = lambda a, b, x, y: round((y - x) / max(b - a, 1) * 1000, 3)  # noqa: E731
        return {
            "rss_start_mib": round(m0, 1),
            "rss_middle_mib": round(m1, 1),
            "rss_end_mib": round(m2, 1),
            "rss_peak_mib": round(max(m for _, m in self.samples), 1),
            "mib_per_1000_requests_first_half": per_k(r0, r1, m0, m1),
            "mib_per_1000_requests_second_half": per_k(r1, r2, m1, m2),
        }


async def more_questions(load: Load, index: int) -> None:
    """Imputations and next-feature questions beside the faults benchmark's clients (sessions, predict, job)."""
    async with httpx.AsyncClient(timeout=30) as client:
        n = 0
        while not load.stopping:
            n += 1
            body = {"rows": [{**ROW, "bmi": 20 + (index * 7 + n) % 20}], "samples": 10, "seed": n}
            await load._send(client, "impute", "POST", "/v1/models/diabetes/impute", json=body)
            body = {"row": {**ROW, "bmi": 20 + n % 20}, "samples": 20, "seed": n}
            await load._send(client, "next-features", "POST", "/v1/models/diabetes/next-features", json=body)
            await asyncio.sleep(0.02)


async def soak(load: Load, seconds: float, extra: int) -> None:
    extras = [asyncio.create_task(more_questions(load, i)) for i in range(extra)]
    await load.run([("soak", seconds)], lambda name, edge: None)
    await asyncio.gather(*extras)


async def probe_latency(url: str, requests: int, readers: int, session: str) -> dict[str, float]:
    """A probe's single-row predict latencies (sequential), with `readers` clients reading `session` meanwhile."""
    stop = asyncio.Event()
    reads = 0

    async def read_loop() -> None:
        nonlocal reads
        async with httpx.AsyncClient(timeout=60) as c:
            while not stop.is_set():
                r = await c.get(f"{url}/v1/sessions/{session}")
                r.raise_for_status()
                reads += 1

    tasks = [asyncio.create_task(read_loop()) for _ in range(readers)]
    times = []
    async with httpx.AsyncClient(timeout=60) as c:
        await asyncio.sleep(0.5 if readers else 0)
        for i in range(requests):
            started = time.perf_counter()
            r = await c.post(f"{url}/v1/models/diabetes/predict", json={"rows": [ROW], "samples": 10, "seed": i})
            r.raise_for_status()
            times.append(time.perf_counter() - started)
    stop.set()
    await asyncio.gather(*tasks)
    ms = np.array(times) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "session_reads": reads}  # fmt: skip


def fill_session(url: str) -> tuple[str, int, int]:
    """A session answered until the service refuses (409 session-full); (its id, answers, size of a read)."""
    with httpx.Client(base_url=url, timeout=60) as c:
        session = c.post("/v1/sessions", json={"model": "diabetes"}).json()["session_id"]
        answers = 0
        while True:
            r = c.post(f"/v1/sessions/{session}/observations", json={"observations": {"bmi": 20 + answers / 100}})
            if r.status_code == 409:
                break
            r.raise_for_status()
            answers += 1
        return session, answers, len(c.get(f"/v1/sessions/{session}").content)


def run(artifact: Path, minutes: float, workers: int, probe_requests: int, readers: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="hhvaem-soak-"))
    shutil.copytree(artifact, folder / "models" / "diabetes")
    redis = Redis(folder)
    redis.start()
    try:
        with pg_schema() as url:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "HHVAEM_THREADS": "1", "HHVAEM_INFERENCE_WORKERS": "1",
                   "HHVAEM_DATABASE_URL": url.render_as_string(hide_password=False),
                   "HHVAEM_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
                   "HHVAEM_MODELS_DIR": str(folder / "models"), "HHVAEM_DATA_DIR": str(folder / "data"),
                   "HHVAEM_LOG_LEVEL": "WARNING"}  # fmt: skip
            service = Service(env, folder / "service.log")
            service.start()
            load = Load(service.url, workers)
            load.job = _submit_job(service.url)
            with Memory(service.process.pid, load) as memory:
                asyncio.run(soak(load, minutes * 60, extra=max(1, workers // 3)))
            acknowledged, lost = load.lost_writes(service.url)
            job = _wait_job(service.url, load.job)
            session, answers, size = fill_session(service.url)
            alone = asyncio.run(probe_latency(service.url, probe_requests, 0, session))
            beside = asyncio.run(probe_latency(service.url, probe_requests, readers, session))
            service.stop()
    finally:
        redis.kill()
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "minutes": minutes,
        "workers": workers,
        "phases": {n: {**c, "slowest_answer_s": round(load.slowest[n], 2)} for n, c in load.counts.items()},
        "acknowledged_writes": acknowledged,
        "lost_writes": lost,
        "other_5xx": sum(c["5xx other"] for c in load.counts.values()),
        "recovery_seconds": {},
        "batch_job": {k: job.get(k) for k in ("status", "total_rows", "processed_rows", "failed_rows")},
        "memory": memory.summary(),
        "full_session": {"answers": answers, "bytes_per_read": size},
        "probe_alone": alone,
        "probe_with_readers": {**beside, "readers": readers},
        "p99_ratio": round(beside["p99_ms"] / alone["p99_ms"], 2),
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--probe-requests", type=int, default=300)
    parser.add_argument("--readers", type=int, default=1, help="Clients reading the full session meanwhile.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = run(args.artifact, args.minutes, args.workers, args.probe_requests, args.readers)
    print(report(out))
    print("memory: " + ", ".join(f"{k} {v}" for k, v in out["memory"].items()))
    full = out["full_session"]
    print(f"a session at its cap: {full['answers']} answers, {full['bytes_per_read']:,} bytes per read")
    a, b = out["probe_alone"], out["probe_with_readers"]
    print(f"probe predict alone: p50 {a['p50_ms']} ms, p99 {a['p99_ms']} ms; with {b['readers']} reader(s) of that "
          f"session ({b['session_reads']} reads): p50 {b['p50_ms']} ms, p99 {b['p99_ms']} ms; "
          f"p99 ratio {out['p99_ratio']} (target <= 2)")  # fmt: skip
    print(f"load average at the end: {out['load_average']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
