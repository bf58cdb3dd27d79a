"""The compose stack end to end, as a new user runs it: build both images, `up -d`, and check what it serves.

    python -m benchmarks.compose_stack [--local-base] [--keep] [--json FILE]

Steps, each timed: `compose build` (the serving and the trainer image), `compose up -d` until the API answers
`/healthz` (the trainer trains the demo model first), then one impute, one questionnaire session, the session's key
in the stack's own Redis (`redis-cli` in the redis container), the model's registry row in its own PostgreSQL
(`psql` in the postgres container), the trainer's progress lines in its log, and `/metrics`; finally `down -v`
(unless --keep). Prints one JSON document (also written to --json) with the timings, the load average and the
commit; exits 1 when a check fails.

`--local-base`, for machines that cannot reach Docker Hub or download.pytorch.org (this project's build machines
reach only deb.debian.org and PyPI): builds stand-ins for the three public images from Debian bookworm's packages
(debootstrap; Python 3.11.2, Redis 7.0, PostgreSQL 15: `benchmarks/compose_local/`), serves torch's CPU wheel and
its dependencies from a local PEP 503 index on the Docker bridge, and runs the same docker-compose.yml with
HHVAEM_PYTHON_IMAGE, HHVAEM_REDIS_IMAGE, HHVAEM_POSTGRES_IMAGE and TORCH_INDEX_URL pointing at them. It needs root
(debootstrap) and copies this machine's CA bundle into the base image (an HTTPS proxy may sit in between).
Uses `docker compose` when the plugin is there, else Debian's `docker-compose` (1.29).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LOCAL = Path(__file__).resolve().parent / "compose_local"
PROJECT = "hhvaem-check"  # its own compose project: volumes and containers apart from a user's `hhvaem` stack
BASE_IMAGE = "hhvaem-local/debian-python:bookworm"
ROW = {"age": 59, "sex": 2, "bmi": 32.1, "blood_pressure": 101.0}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cmd: list[str], timeout: float = 1800, env: dict | None = None, check: bool = True) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {out.returncode}: {(out.stderr or out.stdout)[-2000:]}")
    return out.stdout


@functools.cache
def compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise RuntimeError("neither `docker compose` nor `docker-compose` is installed")


def buildkit_env(env: dict) -> dict:
    """BuildKit for compose's builds: `docker compose` uses it anyway; Debian's docker-compose 1.29 needs it asked
    for, through a docker client that has it (one with the buildx plugin, or a 20.10 client, whose BuildKit is
    built in), else the classic builder builds every stage up to the target, the CUDA one included."""
    env = {**env, "DOCKER_BUILDKIT": "1", "COMPOSE_DOCKER_CLI_BUILD": "1"}
    for client in run(["which", "-a", "docker"], check=False).split():
        buildx = subprocess.run([client, "buildx", "version"], capture_output=True).returncode == 0
        version = run([client, "version", "--format", "{{.Client.Version}}"], check=False).strip()
        if buildx or (version and int(version.split(".")[0]) < 23):
            env["PATH"] = f"{Path(client).parent}{os.pathsep}{env.get('PATH', '')}"
            return env
    raise RuntimeError("no docker client with BuildKit (install the buildx plugin)")


def compose(*args: str, env: dict, timeout: float = 1800, check: bool = True) -> str:
    return run([*compose_command(), "-p", PROJECT, *args], timeout=timeout, env=env, check=check)


# ------------------------------------------------------------------------------------------------ local stand-ins


def build_local_base(work: Path) -> None:
    """Debian bookworm with Python 3.11 (what python:3.11-slim holds), imported as BASE_IMAGE."""
    if subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True).returncode == 0:
        return
    rootfs = work / "rootfs"
    packages = "python3,python3-venv,python3-pip,ca-certificates"
    run(["debootstrap", "--variant=minbase", f"--include={packages}", "bookworm", str(rootfs)], timeout=1800)
    (rootfs / "usr/local/bin/python").symlink_to("/usr/bin/python3")
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
    cert = "/etc/ssl/certs/ca-certificates.crt"
    changes = [
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8",
        f"ENV PIP_CERT={cert} SSL_CERT_FILE={cert} PIP_TRUSTED_HOST={bridge_ip()}",
        'CMD ["python3"]',
    ]
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    cmd = ["docker", "import", *[a for c in changes for a in ("-c", c)], "-", BASE_IMAGE]
    subprocess.run(cmd, stdin=tar.stdout, check=True, capture_output=True, timeout=600)
    tar.wait()


def build_stand_ins() -> dict[str, str]:
    images = {"redis": "hhvaem-local/redis:7", "postgres": "hhvaem-local/postgres:15"}
    for name, tag in images.items():
        run(["docker", "build", "-q", "-t", tag, "--build-arg", f"BASE={BASE_IMAGE}", "-f",
             str(LOCAL / f"{name}.Dockerfile"), str(LOCAL)], timeout=1800)  # fmt: skip
    return images


@functools.cache
def bridge_ip() -> str:
    out = run(["docker", "network", "inspect", "bridge", "--format", "{{(index .IPAM.Config 0).Gateway}}"])
    return out.strip() or "172.17.0.1"


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:  # one line per wheel request would drown the report
        pass


@contextlib.contextmanager
def torch_index(work: Path):
    """torch's CPU wheel and its dependencies as a PEP 503 index on the Docker bridge; yields its URL."""
    wheels = work / "wheels"
    run([sys.executable, "-m", "pip", "download", "-q", "torch==2.13.0", "-d", str(wheels)], timeout=1800)
    simple = work / "index" / "simple"
    for wheel in wheels.glob("*.whl"):
        project = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        (simple / project).mkdir(parents=True, exist_ok=True)
        (simple / project / wheel.name).symlink_to(wheel)
    handler = functools.partial(_QuietFiles, directory=str(work / "index"))
    server = http.server.ThreadingHTTPServer((bridge_ip(), 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{bridge_ip()}:{server.server_address[1]}/simple"
    finally:
        server.shutdown()


# ------------------------------------------------------------------------------------------------ the checks


def call(method: str, url: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read().decode()
            return r.status, json.loads(text) if r.headers.get_content_type().endswith("json") else text
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_healthy(base: str, env: dict, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if call("GET", f"{base}/healthz", timeout=3)[0] == 200:
                return time.monotonic() - started
        except OSError:
            pass
        states = compose("ps", env=env, check=False)
        if re.search(r"trainer\S*\s.*Exit(?:ed \(| )[1-9]", states):
            raise RuntimeError("the trainer failed:\n" + compose("logs", "trainer", env=env, check=False)[-3000:])
        time.sleep(3)
    raise RuntimeError(f"/healthz did not answer within {timeout:.0f} s")


def check_stack(base: str, env: dict, report: dict) -> None:
    checks = report["checks"] = {}
    status, body = call("GET", f"{base}/healthz")
    checks["healthz"] = status == 200
    status, body = call("POST", f"{base}/v1/models/diabetes/impute", {"rows": [ROW], "samples": 20, "seed": 0})
    values = body["rows"][0]["values"] if status == 200 else {}
    checks["impute"] = status == 200 and set(values) >= {"ldl", "hdl"} and values["bmi"] == ROW["bmi"]
    report["imputed_ldl"] = values.get("ldl")
    status, body = call("POST", f"{base}/v1/sessions", {"model": "diabetes", "observations": {"age": 54}})
    session = body.get("session_id") if status in (200, 201) else None
    keys = compose("exec", "-T", "redis", "redis-cli", "--scan", "--pattern", "hhvaem:session:*", env=env).split()
    checks["session_in_redis"] = bool(session) and f"hhvaem:session:{session}" in keys
    sql = "select name, version, active, format_version from models"
    rows = compose("exec", "-T", "postgres", "psql", "-U", "hhvaem", "-d", "hhvaem", "-Atc", sql, env=env)
    report["registry_rows"] = rows.split()
    checks["registry_row_in_postgres"] = any(r.startswith("diabetes|1|t|") for r in rows.split())
    trainer_log = compose("logs", "--no-color", "trainer", env=env)
    report["trainer_log_tail"] = trainer_log.strip().splitlines()[-6:]
    checks["trainer_progress_in_log"] = "stage 1 marginal VAEs: step 1/" in trainer_log
    status, metrics = call("GET", f"{base}/metrics")
    checks["metrics"] = status == 200 and 'route="/v1/models/{name}/impute"' in metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--local-base", action="store_true", help="Build stand-ins for the public images (see above).")
    ap.add_argument("--keep", action="store_true", help="Leave the stack running (and its volumes).")
    ap.add_argument("--port", type=int, default=18000, help="Host port for the API (HHVAEM_API_PORT).")
    ap.add_argument("--timeout", type=float, default=900, help="Seconds to wait for /healthz after `up -d`.")
    ap.add_argument("--json", type=Path, help="Also write the report here.")
    args = ap.parse_args(argv)
    env = buildkit_env({**os.environ, "HHVAEM_API_PORT": str(args.port)})
    for name in ("HHVAEM_TRAIN_FILE", "HHVAEM_TRAIN_TARGET", "HHVAEM_TRAIN_ARGS", "HHVAEM_MODEL_NAME"):
        env.pop(name, None)  # the default stack: the demo model
    report: dict[str, Any] = {
        "command": "python -m benchmarks.compose_stack " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": run(["git", "rev-parse", "--short", "HEAD"], check=False).strip(),
        "load_average_start": os.getloadavg(),
        "compose": " ".join(compose_command()),
        "docker": run(["docker", "version", "--format", "{{.Server.Version}}"]).strip(),
        "seconds": {},
    }
    base = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory(prefix="compose-stack-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        try:
            if args.local_base:
                t = time.monotonic()
                build_local_base(work)
                images = build_stand_ins()
                env.update(
                    HHVAEM_PYTHON_IMAGE=BASE_IMAGE,
                    HHVAEM_REDIS_IMAGE=images["redis"],
                    HHVAEM_POSTGRES_IMAGE=images["postgres"],
                    TORCH_INDEX_URL=stack.enter_context(torch_index(work)),
                )
                report["seconds"]["stand_ins"] = round(time.monotonic() - t, 1)
                report["images"] = {k: env[k] for k in ("HHVAEM_PYTHON_IMAGE", "HHVAEM_REDIS_IMAGE",
                                                          "HHVAEM_POSTGRES_IMAGE")}  # fmt: skip
            t = time.monotonic()
            log("building the serving and trainer images ...")
            compose("build", "api", "trainer", env=env, timeout=3600)
            report["seconds"]["build"] = round(time.monotonic() - t, 1)
            t = time.monotonic()
            log("docker compose up -d ...")
            compose("up", "-d", env=env, timeout=600)
            report["seconds"]["up_to_healthz"] = round(wait_healthy(base, env, args.timeout) + time.monotonic() - t, 1)
            check_stack(base, env, report)
            report["image_sizes"] = run(["docker", "images", "hhvaem", "--format", "{{.Tag}} {{.Size}}"]).split("\n")
        except Exception as e:  # noqa: BLE001 - reported in the JSON, with the stack's logs
            report["error"] = str(e)[-3000:]
            report["logs_tail"] = compose("logs", "--no-color", "--tail", "30", env=env, check=False)[-6000:]
        finally:
            if not args.keep:
                compose("down", "-v", "--remove-orphans", env=env, timeout=300, check=False)
    report["load_average_end"] = os.getloadavg()
    report["ok"] = "error" not in report and all(report.get("checks", {}).values()) and bool(report.get("checks"))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
