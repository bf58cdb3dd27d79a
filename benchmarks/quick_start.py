"""The README's quick start, timed on a fresh copy of the repository: install, first `make demo`, later `make demo`.

    python -m benchmarks.quick_start [--working-tree] [--keep DIR] [--json FILE]

1. A fresh copy: `git clone` of this repository's HEAD, or with --working-tree the files `git ls-files` lists
   (tracked and untracked, ignored ones left out) as they are now, for changes not yet committed.
2. `make .venv/installed` in it: venv, pip, torch's CPU wheel (its index probed first), the package with its `train`
   extra: the install `make demo` needs (the test tooling, `make test`'s `.venv/installed-dev`, is not timed). Its
   size on disk, and whether torch's index was unreachable (then pip's own configuration installed torch).
3. `make demo` with its own data folder (HHVAEM_DATA_DIR) on a free port: seconds until `/healthz` answers 200,
   and until its first line of output (the first run trains the demo model); then it is stopped (SIGINT).
4. `make demo` again: seconds until `/healthz` (the demo model is reused).

Prints one JSON document (also written to --json) with the timings, the commit and the load averages; the copy is
removed unless --keep. Run it on a quiet machine for the README's figures, or say the load next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fresh_copy(dest: Path, working_tree: bool) -> None:
    if not working_tree:
        subprocess.run(["git", "clone", "-q", "--no-local", str(ROOT), str(dest)], check=True)
        return
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def size_mb(path: Path) -> float:
    """Disk usage of a folder, as `du -sk` counts it (blocks, hard links once), in MB."""
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout
    return round(int(out.split()[0]) / 1024, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def time_demo(repo: Path, data: Path, log_file: Path, timeout: float) -> dict:
    """Starts `make demo`, waits for /healthz, stops it; seconds to the first output line and to health."""
    port = free_port()
    env = {**os.environ, "HHVAEM_DATA_DIR": str(data)}
    started = time.monotonic()
    with open(log_file, "w") as out:
        proc = subprocess.Popen(
            ["make", "demo", f"DEMO_ARGS=--port {port}"],
            cwd=repo,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: make, hhvaem and the server stop together
        )
    first_line = None
    try:
        while time.monotonic() - started < timeout:
            if first_line is None and log_file.stat().st_size > 0:
                first_line = time.monotonic() - started
            if healthy(f"http://127.0.0.1:{port}/healthz"):
                return {
                    "seconds_to_healthz": round(time.monotonic() - started, 1),
                    "seconds_to_first_line": round(first_line or 0.0, 1),
                    "load_average": os.getloadavg(),
                }
            if proc.poll() is not None:
                raise RuntimeError(f"make demo exited {proc.returncode}:\n{log_file.read_text()[-3000:]}")
            time.sleep(0.25)
        raise RuntimeError(f"/healthz did not answer within {timeout:.0f} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--working-tree", action="store_true", help="Copy the working tree instead of cloning HEAD.")
    ap.add_argument("--keep", type=Path, help="Make the copy here and keep it.")
    ap.add_argument("--timeout", type=float, default=900, help="Seconds to wait for each /healthz.")
    ap.add_argument("--json", type=Path, help="Also write the report here.")
    args = ap.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    report: dict = {
        "command": "python -m benchmarks.quick_start " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": commit.stdout.strip() + (" + working tree" if args.working_tree else ""),
        "cores": len(os.sched_getaffinity(0)),
        "load_average_start": os.getloadavg(),
    }
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="quick-start-")
    work = args.keep or Path(tmp.name)
    try:
        repo, data = work / "repo", work / "data"
        repo.mkdir(parents=True)
        fresh_copy(repo, args.working_tree)
        log("make .venv/installed ...")
        t = time.monotonic()
        install = subprocess.run(["make", ".venv/installed"], cwd=repo, check=True, capture_output=True, text=True)
        report["install_seconds"] = round(time.monotonic() - t, 1)
        report["venv_mb"] = size_mb(repo / ".venv")
        report["torch_index_unreachable"] = "is unreachable" in install.stderr
        report["load_average_after_install"] = os.getloadavg()
        log("first make demo ...")
        report["first_demo"] = time_demo(repo, data, work / "demo-1.log", args.timeout)
        report["first_demo"]["log"] = (work / "demo-1.log").read_text().splitlines()[:40]
        log("later make demo ...")
        report["later_demo"] = time_demo(repo, data, work / "demo-2.log", args.timeout)
        report["later_demo"]["log"] = (work / "demo-2.log").read_text().splitlines()[:10]
    except (subprocess.CalledProcessError, RuntimeError) as e:
        report["error"] = str(e)[-3000:] + (getattr(e, "stderr", None) or "")[-3000:]  # make's output is text
    finally:
        if tmp is not None:
            tmp.cleanup()
    report["load_average_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if "error" not in report else 1


if __name__ == "__main__":
    sys.exit(main())
