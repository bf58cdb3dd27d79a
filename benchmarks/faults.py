"""Load plus faults, on loopback only: the service under a steady mix of requests while Redis is killed, the database
connection refused and then hung, and the service itself killed; prints lost writes, 5xx counts and recovery times.

  python -m benchmarks.faults ARTIFACT_DIR [--seconds-per-phase 6] [--workers 4] [--json FILE]

Everything runs here and is torn down afterwards: a private redis-server (append-only, fsync always, so that a write
Redis acknowledged survives its kill -9), a PostgreSQL schema of its own in the database `hhvaem_faults` on
`HHVAEM_TEST_POSTGRES_URL`'s server (default postgresql://postgres@127.0.0.1:5432), reached through a TCP proxy
(`benchmarks/proxy.py`) that the script switches to refuse or hang, and the service as a real process (uvicorn).

Phases, `--seconds-per-phase` each: steady; Redis killed (then restarted), steady; database refusing, steady;
database hanging, steady; service killed -9 (then restarted), steady. The load, from `--workers` concurrent
clients: each client keeps one questionnaire session and answers it again and again (every answer the service
acknowledged is recorded), sends stateless predictions, and polls a batch job submitted at the start (that needs
the database). At the end every session is read back: an acknowledged answer that is missing is a lost write. Per phase:
requests, answers by class (2xx / 4xx / 503 / other 5xx / no answer) and the slowest answer; after each fault, the
time from its end (a restart included) until each kind of request succeeded again; the batch job's final state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx

from benchmarks.proxy import TcpProxy

PG_SERVER = os.environ.get("HHVAEM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "hhvaem_faults"
ROW = {"age": 59, "sex": 2, "bmi": 32.1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ the stack


class Redis:
    def __init__(self, folder: Path):
        self.folder, self.port, self.process = folder, free_port(), None

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.folder)]
        cmd += ["--appendonly", "yes", "--appendfsync", "always"]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def _wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextlib.contextmanager
def pg_schema():
    """A SQLAlchemy URL on a fresh schema in `hhvaem_faults` (created if missing); dropped afterwards."""
    import psycopg
    from psycopg import sql

    from hhvaem.app.db.database import normalize_url

    server = normalize_url(PG_SERVER)
    params = {"host": server.host or "127.0.0.1", "port": server.port or 5432, "user": server.username or "postgres"}
    if server.password:
        params["password"] = server.password
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    schema = f"faults_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dbname=DATABASE, autocommit=True, **params) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield server.set(database=DATABASE).update_query_dict({"options": f"-csearch_path={schema}"})
    finally:
        with psycopg.connect(dbname=DATABASE, autocommit=True, **params) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


class Service:
    def __init__(self, env: dict[str, str], log: Path):
        self.env, self.log, self.port, self.process = env, log, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "uvicorn", "hhvaem.app.main:app", "--factory", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--log-level", "warning"]
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited; see {self.log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("the service did not become ready")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(20)
            if self.process.poll() is None:
                self.process.kill()


# --------------------------------------------------------------------------------------------------- the load


class Load:
    """Concurrent clients; every answer is classed and timed, per phase; acknowledged session writes recorded."""

    def __init__(self, url: str, workers: int):
        self.url, self.workers = url, workers
        self.phase = "start"
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.successes: list[tuple[float, str]] = []  # (time, kind) of every 2xx
        self.acknowledged: dict[str, list[float]] = defaultdict(list)  # session -> bmi values answered with 200
        self.slowest: dict[str, float] = defaultdict(float)  # phase -> the longest wait for any answer
        self.job: str | None = None
        self.stopping = False

    def _record(self, kind: str, response: httpx.Response | None) -> bool:
        if response is None:
            cls = "no answer"
        elif response.status_code < 300:
            cls = "2xx"
        elif response.status_code == 503:
            cls = "503"
        elif response.status_code >= 500:
            cls = "5xx other"
        else:
            cls = "4xx"
        self.counts[self.phase][cls] += 1
        self.counts[self.phase]["requests"] += 1
        if cls == "2xx":
            self.successes.append((time.monotonic(), kind))
        return cls == "2xx"

    async def _send(self, client: httpx.AsyncClient, kind: str, method: str, path: str, **kw):
        started = time.monotonic()
        try:
            r = await client.request(method, self.url + path, **kw)
        except httpx.HTTPError:
            r = None
            await asyncio.sleep(0.1)  # nothing listens (the service is down): do not spin
        else:
            self.slowest[self.phase] = max(self.slowest[self.phase], time.monotonic() - started)
        return r if self._record(kind, r) else None

    async def _client(self, index: int) -> None:
        session: str | None = None
        answer = 0
        async with httpx.AsyncClient(timeout=30) as client:
            while not self.stopping:
                if session is None:
                    r = await self._send(client, "session", "POST", "/v1/sessions", json={"model": "diabetes"})
                    session = r.json()["session_id"] if r is not None else None
                else:
                    answer += 1
                    value = 20 + index + answer / 1000  # unique per answer: a lost one is recognisable
                    body = {"observations": {"bmi": value}}
                    if await self._send(client, "session", "POST", f"/v1/sessions/{session}/observations", json=body):
                        self.acknowledged[session].append(value)
                await self._send(client, "predict", "POST", "/v1/models/diabetes/predict",
                                 json={"rows": [ROW], "samples": 10, "seed": answer})  # fmt: skip
                if self.job:  # needs the database
                    await self._send(client, "job status", "GET", f"/v1/batch-jobs/{self.job}")
                await asyncio.sleep(0.02)

    async def run(self, phases, on_phase) -> None:
        clients = [asyncio.create_task(self._client(i)) for i in range(self.workers)]
        for name, seconds in phases:
            self.phase = name
            await asyncio.get_running_loop().run_in_executor(None, on_phase, name, "start")
            await asyncio.sleep(seconds)
            await asyncio.get_running_loop().run_in_executor(None, on_phase, name, "end")
        self.stopping = True
        await asyncio.gather(*clients)

    def lost_writes(self, url: str) -> tuple[int, int]:
        """(acknowledged answers, of them missing when each session is read back)."""
        total = lost = 0
        with httpx.Client(base_url=url, timeout=30) as c:
            for session, values in self.acknowledged.items():
                history = {o["value"] for o in c.get(f"/v1/sessions/{session}").json()["observations"]}
                total += len(values)
                lost += sum(v not in history for v in values)
        return total, lost


# -------------------------------------------------------------------------------------------------- the run


def run(artifact: Path, seconds: float, workers: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="hhvaem-faults-"))
    shutil.copytree(artifact, folder / "models" / "diabetes")
    redis = Redis(folder)
    redis.start()
    fault_ended: dict[str, float] = {}
    try:
        with pg_schema() as url:
            proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432)).start()
            through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
            env = {**os.environ, "OMP_NUM_THREADS": "1", "HHVAEM_THREADS": "1", "HHVAEM_INFERENCE_WORKERS": "1",
                   "HHVAEM_DATABASE_URL": through, "HHVAEM_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
                   "HHVAEM_MODELS_DIR": str(folder / "models"), "HHVAEM_DATA_DIR": str(folder / "data"),
                   "HHVAEM_DATABASE_TIMEOUT_SECONDS": "2", "HHVAEM_REGISTRY_REFRESH_SECONDS": "1",
                   "HHVAEM_BATCH_LEASE_SECONDS": "3", "HHVAEM_LOG_LEVEL": "WARNING"}  # fmt: skip
            service = Service(env, folder / "service.log")
            service.start()
            job = _submit_job(service.url)
            load = Load(service.url, workers)
            load.job = job

            def on_phase(name: str, edge: str) -> None:
                action = {
                    ("redis killed", "start"): redis.kill,
                    ("redis killed", "end"): redis.start,
                    ("database refusing", "start"): lambda: setattr(proxy, "mode", "refuse"),
                    ("database refusing", "end"): lambda: setattr(proxy, "mode", "forward"),
                    ("database hanging", "start"): lambda: setattr(proxy, "mode", "hang"),
                    ("database hanging", "end"): lambda: setattr(proxy, "mode", "forward"),
                    ("service killed", "start"): service.kill,
                    ("service killed", "end"): service.start,
                }.get((name, edge))
                if edge == "end" and action:
                    fault_ended[name] = time.monotonic()  # recovery counts from the fault's end, restarts included
                if action:
                    action()

            faults = ("redis killed", "database refusing", "database hanging", "service killed")
            phases = [("steady", seconds)]
            for fault in faults:  # a steady phase after each: recovery is measured there
                phases += [(fault, seconds), (f"after {fault}", seconds)]
            asyncio.run(load.run(phases, on_phase))
            acknowledged, lost = load.lost_writes(service.url)
            final_job = _wait_job(service.url, job)
            service.stop()
            proxy.stop()
    finally:
        redis.kill()
        shutil.rmtree(folder, ignore_errors=True)
    recovery = {
        fault: {
            kind: next((round(t - ended, 2) for t, k in load.successes if k == kind and t >= ended), None)
            for kind in ("session", "predict", "job status")
        }
        for fault, ended in fault_ended.items()
    }
    return {
        "phases": {name: {**c, "slowest_answer_s": round(load.slowest[name], 2)} for name, c in load.counts.items()},
        "acknowledged_writes": acknowledged,
        "lost_writes": lost,
        "other_5xx": sum(c["5xx other"] for c in load.counts.values()),
        "recovery_seconds": recovery,
        "batch_job": {k: final_job.get(k) for k in ("status", "total_rows", "processed_rows", "failed_rows")},
    }


def _submit_job(url: str) -> str:
    rows = "\n".join(f"{40 + i % 30},{20 + i % 15}" for i in range(2000))
    files = {"file": ("t.csv", f"age,bmi\n{rows}\n".encode())}
    r = httpx.post(url + "/v1/batch-jobs", files=files, data={"model": "diabetes", "operation": "predict",
                                                                "samples": "10"}, timeout=60)  # fmt: skip
    r.raise_for_status()
    return r.json()["id"]


def _wait_job(url: str, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            job = httpx.get(f"{url}/v1/batch-jobs/{job_id}", timeout=10).json()
            if job.get("status") in ("succeeded", "failed", "cancelled"):
                return job
        time.sleep(0.5)
    return {"status": "not finished"}


def report(out: dict[str, Any]) -> str:
    lines = [f"{'phase':<26}{'requests':>9}{'2xx':>7}{'4xx':>6}{'503':>6}{'5xx other':>10}{'no answer':>10}"
             f"{'slowest s':>10}"]  # fmt: skip
    for name, c in out["phases"].items():
        lines.append(
            f"{name:<26}{c.get('requests', 0):>9}{c.get('2xx', 0):>7}{c.get('4xx', 0):>6}{c.get('503', 0):>6}"
            f"{c.get('5xx other', 0):>10}{c.get('no answer', 0):>10}{c['slowest_answer_s']:>10}"
        )
    lines.append(f"lost writes: {out['lost_writes']} of {out['acknowledged_writes']} acknowledged session answers")
    lines.append(f"5xx other than 503: {out['other_5xx']}")
    for fault, kinds in out["recovery_seconds"].items():
        lines.append(f"recovery after {fault}: " + ", ".join(f"{k} {v} s" for k, v in kinds.items()))
    lines.append("batch job submitted at the start: " + ", ".join(f"{k} {v}" for k, v in out["batch_job"].items()))
    return "\n".join(lines)


PROBE = """
import resource, sys, time
from hhvaem.app.engine import Engine, PredictQuery
engine = Engine(sys.argv[1], threads=1)
rows, samples = int(sys.argv[2]), int(sys.argv[3])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
engine.answer(PredictQuery([{"age": 50, "bmi": 30}] * rows, samples, seed=0))
seconds = time.perf_counter() - started
print(seconds, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def work_probe(artifact: Path, sizes=((10, 100), (100, 100), (100, 1000))) -> list[dict[str, float]]:
    """What one predict request costs by rows x samples (the `max_work` units): seconds on one thread and the growth
    of peak memory, each size in a fresh process."""
    out = []
    for rows, samples in sizes:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-c", PROBE, str(artifact), str(rows), str(samples)],
                              capture_output=True, text=True, env=env, check=True)  # fmt: skip
        seconds, memory = map(float, done.stdout.split())
        units = rows * samples
        out.append({"rows": rows, "samples": samples, "units": units, "seconds": round(seconds, 3),
                    "peak_memory_mib": round(memory / 2**20, 1), "us_per_unit": round(seconds / units * 1e6, 1),
                    "kib_per_unit": round(memory / units / 1024, 2)})  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--seconds-per-phase", type=float, default=6.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--work-probe", action="store_true", help="Only measure what rows x samples cost.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.work_probe:
        out: Any = work_probe(args.artifact)
        for r in out:
            print(" ".join(f"{k} {v}" for k, v in r.items()))
    else:
        out = run(args.artifact, args.seconds_per_phase, args.workers)
        print(report(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
