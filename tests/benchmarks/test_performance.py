"""The performance benchmark runs end to end (small settings) and its report states every section."""

from __future__ import annotations

import json

from benchmarks import performance
from hhvaem.model.schema import Schema
from hhvaem.training.demo import demo_table


def test_quick_run_measures_every_section_and_renders(demo_artifact, tmp_path):
    df, schema = demo_table()
    table = tmp_path / "diabetes"
    table.mkdir()
    df.to_csv(table / "data.csv", index=False)
    (table / "schema.json").write_text(json.dumps(Schema.to_dict(schema)))
    out = tmp_path / "perf.json"
    argv = ["run", str(table), "--artifact", demo_artifact, "--quick", "--reps", "6", "--no-before", "--json", str(out)]
    performance.main(argv)
    res = json.loads(out.read_text())
    assert res["peak_flops"] > 1e9 and 0 < res["flops_per_row"]["impute"] < res["flops_per_row"]["conditional"]
    variants = res["variants"]
    assert {"after, paper configuration", "with 3-D matrix products", "after, tanh"} <= set(variants)
    served = next(k for k in variants if k.startswith("served model ("))
    assert variants[served]["nodes"] < variants["served model, with the predictor in log p*"]["nodes"]
    # folding rows x chains into 2-D matrix products saves nodes (Gemm fuses the bias add)
    assert variants["after, paper configuration"]["nodes"] < variants["with 3-D matrix products"]["nodes"]
    assert all(v["rows1_ms"]["p50"] > 0 for v in variants.values())
    assert set(res["latency"]["onnx"]) == {"impute", "predict", "next-features"}
    assert [t["rows"] for t in res["throughput"]] == [1, 10]
    errors = [s["mean_se_over_std"] for s in res["samples"]]
    assert errors[0] > errors[-1] > 0  # more samples, smaller Monte Carlo error
    text = performance.render(res)
    for heading in ("## The floor", "## The graphs", "## Engine latency", "## Throughput", "## How many posterior"):
        assert heading in text
