"""The scaling-out recipe of docker-compose.yml end to end: API replicas behind nginx, batch jobs on a Ray cluster.

    python -m benchmarks.compose_scale [--local-base] [--keep] [--json FILE]

Builds the `hhvaem:ray` image (the serving image with the `ray` extra), brings up the `scale` and `ray` profiles
with 2 API replicas and one Ray worker of one CPU (this is a 2-core machine) besides the default stack, and checks,
through the load balancer: `/healthz`; that requests are spread over both replicas (their access logs); a
questionnaire session created and continued through it; a batch job scored on the Ray cluster (its message says
so) and its result; the Ray cluster's nodes (`ray status` in the head). Then `down -v` (unless --keep). Prints one
JSON document (also to --json) with the timings, the load average and the commit; exits 1 when a check fails.

`--local-base`: the stand-ins of `benchmarks/compose_stack.py` for machines that reach neither Docker Hub nor
download.pytorch.org (Python, Redis and PostgreSQL images from Debian's packages, torch from a local index), plus
one for nginx (`benchmarks/compose_local_nginx.Dockerfile`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from benchmarks.compose_stack import (
    BASE_IMAGE,
    ROOT,
    build_local_base,
    build_stand_ins,
    buildkit_env,
    call,
    compose_command,
    run,
    torch_index,
)

PROJECT = "hhvaem-scale"  # its own compose project: containers and volumes apart from the others
NGINX_IMAGE = "hhvaem-local/nginx:bookworm"
ROWS = 600


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def compose(*args: str, env: dict, timeout: float = 1800, check: bool = True) -> str:
    profiles = ["--profile", "scale", "--profile", "ray"]
    return run([*compose_command(), "-p", PROJECT, *profiles, *args], timeout=timeout, env=env, check=check)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upload(base: str, content: bytes) -> tuple[int, Any]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in {"model": "diabetes", "operation": "predict", "samples": "20"}.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(
        f"{base}/v1/batch-jobs", data=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def table_csv(rows: int) -> bytes:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"age": rng.integers(20, 80, rows).astype(float), "bmi": rng.uniform(18, 42, rows).round(1)})
    buffer = io.StringIO()
    df.to_csv(buffer, index=False)
    return buffer.getvalue().encode()


def container_logs(container: str) -> str:
    out = subprocess.run(["docker", "logs", container], capture_output=True, text=True, timeout=60)
    return out.stdout + out.stderr  # uvicorn's access log is on stderr


def wait_for(base: str, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.suppress(OSError):
            if call("GET", f"{base}/healthz", timeout=3)[0] == 200:
                return time.monotonic() - started
        time.sleep(3)
    raise RuntimeError(f"{base}/healthz did not answer within {timeout:.0f} s")


def check(base: str, env: dict, report: dict) -> None:
    checks = report["checks"] = {}
    for _ in range(20):
        call("GET", f"{base}/v1/models")
    logs = {c: container_logs(c) for c in compose("ps", "-q", "api-replica", env=env).split()}
    report["requests_per_replica"] = [log_text.count("GET /v1/models ") for log_text in logs.values()]
    checks["both_replicas_answer"] = len(logs) == 2 and all(n > 0 for n in report["requests_per_replica"])
    status, body = call("POST", f"{base}/v1/sessions", {"model": "diabetes", "observations": {"age": 54}})
    sid = body.get("session_id") if status in (200, 201) else None
    steps = [call("POST", f"{base}/v1/sessions/{sid}/observations", {"observations": {f: v}}) for f, v in
             (("bmi", 31.2), ("sex", 1), ("hdl", 50.0))]  # fmt: skip
    status, body = call("GET", f"{base}/v1/sessions/{sid}")
    checks["session_across_replicas"] = (
        bool(sid)
        and all(s == 200 for s, _ in steps)
        and status == 200
        and (body["current"] == {"age": 54, "bmi": 31.2, "sex": 1, "hdl": 50.0})
    )
    status, job = upload(base, table_csv(ROWS))
    started = time.monotonic()
    while status == 202 and job["status"] not in ("succeeded", "failed") and time.monotonic() - started < 600:
        time.sleep(2)
        _, job = call("GET", f"{base}/v1/batch-jobs/{job['id']}")
    report["batch_job"] = {k: job.get(k) for k in ("status", "processed_rows", "message")} if status == 202 else job
    report["batch_job_seconds"] = round(time.monotonic() - started, 1)
    result = call("GET", f"{base}/v1/batch-jobs/{job['id']}/result")[1] if status == 202 else ""
    checks["batch_job_on_ray"] = (
        status == 202 and job["status"] == "succeeded" and "on Ray" in (job["message"] or "")
        and isinstance(result, str) and len(result.strip().splitlines()) == ROWS + 1
    )  # fmt: skip
    ray_status = compose("exec", "-T", "ray-head", "ray", "status", "--address", "127.0.0.1:6379", env=env, check=False)
    report["ray_status"] = [line for line in ray_status.splitlines() if "node_" in line or "CPU" in line][:6]
    checks["ray_cluster_has_a_worker"] = ray_status.count("node_") >= 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--local-base", action="store_true")
    ap.add_argument("--keep", action="store_true", help="leave the stack running")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    commit = run(["git", "rev-parse", "--short", "HEAD"]).strip()
    report: dict[str, Any] = {
        "command": "python -m benchmarks.compose_scale " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": commit + ("+uncommitted" if run(["git", "status", "--porcelain"]).strip() else ""),
        "load_average_start": list(os.getloadavg()),
        "seconds": {},
    }
    lb, api = free_port(), free_port()
    env = buildkit_env({**os.environ, "HHVAEM_LB_PORT": str(lb), "HHVAEM_API_PORT": str(api)})
    env |= {"HHVAEM_API_REPLICAS": "2", "HHVAEM_RAY_WORKERS": "1", "HHVAEM_RAY_WORKER_CPUS": "1"}
    env |= {"HHVAEM_RAY_ADDRESS": "ray://ray-head:10001", "HHVAEM_RAY_PARTITION_ROWS": "256"}
    ok = False
    with tempfile.TemporaryDirectory() as work, contextlib.ExitStack() as stack:
        if args.local_base:
            started = time.monotonic()
            build_local_base(Path(work))
            images = build_stand_ins()
            run(["docker", "build", "-q", "-t", NGINX_IMAGE, "--build-arg", f"BASE={BASE_IMAGE}", "-f",
                 str(ROOT / "benchmarks" / "compose_local_nginx.Dockerfile"), str(ROOT / "benchmarks")])  # fmt: skip
            env |= {"HHVAEM_PYTHON_IMAGE": BASE_IMAGE, "HHVAEM_NGINX_IMAGE": NGINX_IMAGE}
            env |= {"HHVAEM_REDIS_IMAGE": images["redis"], "HHVAEM_POSTGRES_IMAGE": images["postgres"]}
            env["TORCH_INDEX_URL"] = stack.enter_context(torch_index(Path(work)))
            report["seconds"]["stand_ins"] = round(time.monotonic() - started, 1)
        try:
            started = time.monotonic()
            compose("build", env=env, timeout=3600)
            report["seconds"]["build"] = round(time.monotonic() - started, 1)
            started = time.monotonic()
            compose("up", "-d", env=env, timeout=1800)
            report["seconds"]["up_to_lb_healthz"] = round(wait_for(f"http://127.0.0.1:{lb}", 900), 1)
            check(f"http://127.0.0.1:{lb}", env, report)
            ok = all(report["checks"].values())
        except Exception as e:  # noqa: BLE001 - reported in the JSON, then the stack goes down
            report["error"] = str(e)[-3000:]
            report["logs_tail"] = compose("logs", "--no-color", "--tail", "30", env=env, check=False)[-6000:]
        finally:
            if not args.keep:
                compose("down", "-v", "--remove-orphans", env=env, check=False, timeout=600)
    report["load_average_end"] = list(os.getloadavg())
    report["ok"] = ok
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
