"""Engine figures to A/B the cost of per-row seeding (issue #21, item 1) against an earlier commit.

    python -m benchmarks.seeding_cost ARTIFACT TABLE.csv

Prints the median time of one-row impute and next-features at 100 samples, and `score_frame` throughput on the
table's rows (30 % of cells hidden, seeded) for predict at 10 samples and impute+predict at 100. One ONNX Runtime
thread. For an A/B, run it at both commits on the same machine, one after the other, with the same artifact (an
artifact both versions read), and record the load average it prints.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd


def median_seconds(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("table", help="CSV with the model's feature columns (others are ignored)")
    args = parser.parse_args()

    from hhvaem.app.engine.engine import Engine
    from hhvaem.app.engine.scoring import score_frame

    engine = Engine(args.artifact, threads=1)
    names = [c.name for c in engine.schema.features]
    table = pd.read_csv(args.table)[names]
    rng = np.random.default_rng(0)
    rows = table.mask(rng.random(table.shape) < 0.3)
    one = {k: v for k, v in table.iloc[0].items() if k in names[:2]}
    print("load average", [round(x, 2) for x in os.getloadavg()])
    impute = median_seconds(lambda: engine.impute([one], samples=100), 40)
    print(f"impute, 1 row x 100 samples: {1e3 * impute:.2f} ms")
    ranking = median_seconds(lambda: engine.next_features(one, samples=100), 20)
    print(f"next-features, 1 row x 100 samples: {1e3 * ranking:.2f} ms")
    seconds = median_seconds(lambda: score_frame(engine, rows, "predict", samples=10), 3)
    print(f"score_frame predict x 10 samples: {len(rows) / seconds:.0f} rows/s ({len(rows)} rows)")
    seconds = median_seconds(lambda: score_frame(engine, rows, "both", samples=100), 1)
    print(f"score_frame both x 100 samples: {seconds:.2f} s")
    print("load average", [round(x, 2) for x in os.getloadavg()])


if __name__ == "__main__":
    main()
