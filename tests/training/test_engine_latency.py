"""The engine latency benchmark end to end in --quick mode on a tiny synthetic table (no timing assertions)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from benchmarks.engine_latency import flop_count, main


def _table(path):
    rng = np.random.default_rng(0)
    n = 60
    a = rng.normal(size=n)
    b = a + 0.3 * rng.normal(size=n)
    c = (a + rng.normal(size=n) > 0).astype(float)
    y = np.exp(0.5 * a + 0.2 * rng.normal(size=n))
    pd.DataFrame({"a": a, "b": b, "c": c, "y": y}).to_csv(path / "data.csv", index=False)
    schema = {
        "features": [{"name": "a", "type": "real"}, {"name": "b", "type": "real"}, {"name": "c", "type": "binary"}],
        "targets": [{"name": "y", "type": "positive"}],
    }
    (path / "schema.json").write_text(json.dumps(schema))


def test_quick_run_writes_every_figure(tmp_path):
    _table(tmp_path)
    out = tmp_path / "latency.json"
    threads = torch.get_num_threads()
    try:
        main(
            [str(tmp_path), "--quick", "--steps", "10", "--threads", "1", "--reps", "3", "--rows", "6"]
            + ["--chunks", "2", "3", "--json", str(out)]
        )
    finally:
        torch.set_num_threads(threads)
    res = json.loads(out.read_text())
    assert res["commit"] and res["machine"]["cpu_model"] and len(res["machine"]["load_start"]) == 3
    assert {"numpy", "onnxruntime", "torch"} <= set(res["versions"])
    assert res["settings"]["threads"] == 1 and res["settings"]["quick"]
    for name in ("onnx", "torch"):
        b = res["backends"][name]
        for fig in ("impute_ms", "graph_ms", "next_features_ms"):
            assert 0 < b[fig]["p50"] <= b[fig]["p99"]
        tp = b["throughput"]
        assert tp["best_chunk"] in (2, 3) and tp["graph_rows_per_s"] > 0 and tp["engine_rows_per_s"] > 0
        assert b["floor"]["achieved_flops_per_s"] > 0 and b["floor"]["achieved_over_floor_time"] > 0
        assert b["floor"]["fraction_of_representative_rate"] > 0
    for fig in ("impute_p50", "graph_p50", "next_features_p50", "throughput_graph", "throughput_engine"):
        assert res["ratios"][fig]["ort_speedup"] > 0 and res["ratios"][fig]["ort_over_torch_time"] > 0
    assert res["flops"]["per_row_total"] > 0 and res["flops"]["per_row_by_network"]
    # The analytic count agrees with torch's FlopCounterMode on the actual graph (which misses only the
    # marginal decoders' one-input first layer, a broadcast multiply in torch).
    counted = res["flops"]["torch_flop_counter"]["per_row_total"]
    assert 0.9 * res["flops"]["per_row_total"] < counted <= res["flops"]["per_row_total"]
    assert res["matmul_rates"]["peak"]["ort"] > 0
    assert {t["name"] for t in res["targets"]} >= {"single-row impute p50 (ORT)", "next-features p50 (ORT)"}
    assert all(isinstance(t["pass"], bool) for t in res["targets"])
    assert "| figure |" in res["markdown"]


def test_flop_count_matches_the_architecture():
    """Boston's default architecture: 51 evaluations of (prior 5-64-20, decoder 10-64-64-26, predictor 36-64-64-2)."""
    from hhvaem.model.hhvaem import HHVAEM, ModelConfig
    from hhvaem.model.schema import Column, Schema

    feats = tuple(Column(f"x{i}", "real") for i in range(13))
    model = HHVAEM(Schema(features=feats, targets=(Column("y", "real"),)), ModelConfig.for_table("hhvaem", 13, 506))
    fl = flop_count(model, 100)
    assert fl["log_density_evaluations_per_chain"] == 1 + 10 * 5
    eval_macs = (5 * 64 + 64 * 20) + (10 * 64 + 64 * 64 + 64 * 26) + (36 * 64 + 64 * 64 + 64 * 2)
    sampler = 100 * 51 * 2 * 2 * eval_macs
    assert abs(fl["sampler_share"] * fl["per_row_total"] - sampler) < 1e-6 * sampler
