"""Batch-scoring throughput: in-process against Ray with 1 and 2 workers, in one run, and what N nodes would give.

    python -m benchmarks.ray_scoring [--model DIR] [--rows 100000] [--samples 10] [--workers 1,2] [--json FILE]

The table: the demo's diabetes rows (scikit-learn's), drawn with replacement to --rows rows, 20 % of the cells
emptied, written as a directory of Parquet files (one per 25,000 rows). Each engine scores all of it with the same
seed: in-process is `score_frame` over the whole table in this process (one ONNX Runtime thread), the Ray runs are
`score_on_ray` on a local cluster of as many CPUs as workers (one actor per CPU, one ONNX Runtime thread each),
timed from the call to the last partition written (the cluster's start is timed apart: it is paid once per
cluster, not per job). The Ray results are checked equal to the in-process ones, row by row.

Printed (and written to --json): rows/s of each, the ratios to in-process, the projected time for 10M rows, and
the projection for a cluster of N nodes of W scoring CPUs each from the measured per-worker throughput (linear: the
partitions are independent and nothing is shared but the input and output storage, which this does not measure).
The load average before and after, the commit and the command go with the figures; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FILE_ROWS = 25_000


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    )
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=Path(__file__).parent)
    return out.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def make_table(rows: int, folder: Path, seed: int = 0) -> pd.DataFrame:
    from hhvaem.training.demo import demo_table

    base, schema = demo_table()
    features = [c.name for c in schema.features]
    rng = np.random.default_rng(seed)
    df = base[features].iloc[rng.integers(0, len(base), rows)].reset_index(drop=True)
    df = df.mask(rng.random(df.shape) < 0.2)
    folder.mkdir(parents=True, exist_ok=True)
    for i, start in enumerate(range(0, rows, FILE_ROWS)):
        df.iloc[start : start + FILE_ROWS].to_parquet(folder / f"part-{i:04d}.parquet", index=False)
    return df


def in_process(model: Path, df: pd.DataFrame, samples: int) -> tuple[float, pd.DataFrame]:
    from hhvaem.app.engine import Engine
    from hhvaem.app.engine.scoring import score_frame

    engine = Engine(model, threads=1)
    started = time.perf_counter()
    out, _ = score_frame(engine, df, "predict", samples, 128, 0)
    return time.perf_counter() - started, out


def on_ray(model: Path, data: Path, workers: int, samples: int, partition_rows: int, work: Path) -> dict[str, Any]:
    import ray

    from hhvaem.app.engine.distributed import score_on_ray
    from hhvaem.app.engine.partitions import read_results

    started = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    cluster = time.perf_counter() - started
    try:
        out = work / f"ray-{workers}"
        started = time.perf_counter()
        report = score_on_ray(
            model, data, out, "predict", samples, 128, 0, partition_rows=partition_rows, workers=workers
        )
        seconds = time.perf_counter() - started
        assert report.complete, report.failed
        result = read_results(out)
    finally:
        ray.shutdown()
    return {"seconds": seconds, "cluster_start_seconds": cluster, "result": result, "workers": report.workers}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="artifact (default: the demo model, trained if missing)"
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=10, help="posterior samples per row")
    parser.add_argument("--workers", default="1,2", help="Ray worker counts, comma-separated")
    parser.add_argument("--partition-rows", type=int, default=4096)
    parser.add_argument("--nodes", default="1,4,16,64", help="cluster sizes to project")
    parser.add_argument("--cpus-per-node", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    model = args.model or _demo_model()
    record: dict[str, Any] = {
        "command": "python -m benchmarks.ray_scoring " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": commit(),
        "cpus": os.cpu_count(),
        "rows": args.rows,
        "samples": args.samples,
        "partition_rows": args.partition_rows,
        "load_average_start": load(),
    }
    work = Path(tempfile.mkdtemp(prefix="ray-scoring-"))
    try:
        df = make_table(args.rows, work / "input")
        seconds, expected = in_process(model, df, args.samples)
        runs = {"in-process": {"seconds": seconds, "rows_per_s": args.rows / seconds}}
        print(f"in-process: {args.rows / seconds:,.0f} rows/s ({seconds:.1f} s)", flush=True)
        for workers in [int(w) for w in args.workers.split(",")]:
            run = on_ray(model, work / "input", workers, args.samples, args.partition_rows, work)
            got = run.pop("result")
            pd.testing.assert_frame_equal(got[list(expected.columns)], expected, check_dtype=False, check_exact=True)
            run["rows_per_s"] = args.rows / run["seconds"]
            run["ratio_to_in_process"] = run["rows_per_s"] / runs["in-process"]["rows_per_s"]
            run["rows_per_s_per_worker"] = run["rows_per_s"] / workers
            runs[f"ray-{workers}"] = run
            print(
                f"ray, {workers} worker{'s' * (workers > 1)}: {run['rows_per_s']:,.0f} rows/s ({run['seconds']:.1f} s, "
                f"x{run['ratio_to_in_process']:.2f} in-process; cluster start {run['cluster_start_seconds']:.1f} s)",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record["runs"] = runs
    record["identical_to_in_process"] = True  # asserted above, row by row
    record["projection_10M_rows_hours"] = {k: 1e7 / v["rows_per_s"] / 3600 for k, v in runs.items()}
    per_worker = max(v["rows_per_s_per_worker"] for k, v in runs.items() if k.startswith("ray-"))
    record["per_worker_rows_per_s"] = per_worker
    record["nodes_projection"] = {
        n: {
            "rows_per_s": n * args.cpus_per_node * per_worker,
            "10M_rows_minutes": 1e7 / (n * args.cpus_per_node * per_worker) / 60,
        }
        for n in [int(x) for x in args.nodes.split(",")]
    }
    record["load_average_end"] = load()
    for k, v in record["projection_10M_rows_hours"].items():
        print(f"10M rows, {k}: {v:.1f} h")
    for n, p in record["nodes_projection"].items():
        speed, minutes = p["rows_per_s"], p["10M_rows_minutes"]
        print(f"{n} nodes x {args.cpus_per_node} workers: {speed:,.0f} rows/s, 10M rows in {minutes:.0f} min")
    print(json.dumps(record, indent=1))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


def _demo_model() -> Path:
    from hhvaem.app.core.config import Settings

    target = Settings().data_dir / "demo" / "diabetes"
    if not (target / "manifest.json").is_file():
        subprocess.run([str(Path(sys.executable).with_name("hhvaem")), "demo", "--train-only"], check=True)
    return target


if __name__ == "__main__":
    main()
