"""Serving latency and throughput of the engine, ONNX Runtime against torch eager, and the arithmetic floor.

    python -m benchmarks.engine_latency ../shared/data/uci/boston [--steps 500] [--threads 2]
        [--json docs/engine_latency.json] [--quick] [--artifact DIR]

Trains a model with the table's default architecture (ModelConfig.for_table; boston: latent [10, 5],
hidden 64, T=10, L=5; accuracy is irrelevant here, so few steps) into a temporary artifact (or
reuses `--artifact`), then measures both backends in the same process with the same thread count:

  * single-row impute, 100 samples: Engine.impute (numpy encode + noise + graph + summaries) and the
    bare graph call (backend.run on prepared feeds), p50 / p99 over repetitions after warm-up;
  * next-features for one row with a few features observed: p50 / p99;
  * throughput, 1,000 rows x 100 samples, over several chunk sizes (rows per call), best reported;
  * the arithmetic floor: matmul FLOPs per row counted from the architecture (elementwise ops are
    ignored), against matmul rates measured in the same run (ORT MatMul of the sampler's own shapes,
    a representative [100 * rows, 64] x [64, 64], and a large square sgemm for the peak).

Each backend is measured in its own block (torch's OpenMP workers and ORT's spinning pool would
otherwise steal cycles from each other on a 2-core machine). Prints Markdown tables; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

TARGETS = {
    "impute_p50_ms": 10.0,
    "next_features_p50_ms": 25.0,
    "ort_speedup": 2.0,
    "floor_ratio": 2.0,  # achieved time / floor time
}
BACKENDS = ("onnx", "torch")
SAMPLES = 100


# ---- machine ------------------------------------------------------------------------------------------
def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted({f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "fma", "amx"))})
    except OSError:
        pass
    return []


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class CpuShare:
    """CPU used by other processes while a block runs, in cores (from /proc/stat minus this process's own time).

    The load average lags by a minute; this says whether the block itself shared the cores.
    """

    def __init__(self):
        self.start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float]:
        busy = 0.0
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            v = [int(x) for x in fields]
            # user nice system idle iowait irq softirq steal ...
            busy = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
        t = os.times()
        return time.perf_counter(), busy, t.user + t.system

    def stop(self) -> dict[str, float]:
        t1, b1, s1 = self._read()
        t0, b0, s0 = self.start
        wall = max(t1 - t0, 1e-9)
        return {
            "wall_s": wall,
            "own_cores": (s1 - s0) / wall,
            "other_processes_cores": max(0.0, ((b1 - b0) - (s1 - s0)) / wall),
        }


def versions() -> dict[str, str]:
    import onnxruntime
    import torch

    out = {"python": platform.python_version(), "numpy": np.__version__, "onnxruntime": onnxruntime.__version__}
    out["torch"] = torch.__version__
    try:
        import onnx

        out["onnx"] = onnx.__version__
    except ImportError:
        pass
    return out


# ---- statistics ---------------------------------------------------------------------------------------
def stats_ms(seconds: list[float]) -> dict[str, float]:
    a = np.asarray(seconds) * 1000.0
    return {
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "n": int(a.size),
    }


def timed(fn, reps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn(0)
    out = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
    return out


# ---- FLOPs --------------------------------------------------------------------------------------------
def _mlp_layers(mlp) -> list[tuple[int, int]]:
    return [(layer.in_features, layer.out_features) for layer in mlp.layers]


def _grouped_macs(g) -> int:
    return int(sum(w.shape[0] * w.shape[1] * w.shape[2] for w in g.weights))


def flop_count(model, samples: int) -> dict[str, Any]:
    """Matmul FLOPs (2 per multiply-add) of one row of the predictive graph, per network, from the architecture.

    Per row (not per chain): the marginal encoders and the dependency encoder. Per chain: 1 + T*L
    evaluations of log p* and its gradient (the initial state, then L per transition; the gradient
    is carried in the HMC state, so a transition costs L, not L + 1), each a forward pass of the
    top-down prior MLPs, the code decoder and the predictor plus their vjp (one matmul per layer,
    the same multiply-adds as the forward); then the final decode as the graph is written
    (code_params and forward_pass each recompute top-down + decoder): priors + decoder (code), the
    marginal GroupedMLP decoders, priors + decoder + predictor (target), and, where the graph has the
    `target_given` output, the predictor once more per feature (each set to its sampled code). Elementwise ops (SiLU and
    its slope, likelihood scores, leapfrog updates, Metropolis masks) are ignored.
    """
    from hhvaem.model.io.contract import OUTPUTS

    dep, cfg = model.dependency, model.config
    n_eval = 1 + cfg.hmc_steps * cfg.leapfrog_steps if cfg.uses_hmc else 0
    prior_layers = [s for p in dep.priors for s in _mlp_layers(p)]
    dec_layers, pred_layers = _mlp_layers(dep.decoder), _mlp_layers(dep.predictor)

    def macs(layers):
        return sum(a * b for a, b in layers)

    enc = sum(macs(_mlp_layers(t)) for t in dep.trunks) + sum(h.in_features * h.out_features for h in dep.heads)
    per_row = {
        "marginal encoders (GroupedMLP, once per row)": 2 * _grouped_macs(model.marginal.encoder),
        "dependency encoder (trunks + heads, once per row)": 2 * enc,
    }
    per_chain = {
        f"top-down prior MLPs, log p* fwd + vjp x {n_eval}": 2 * 2 * macs(prior_layers) * n_eval,
        f"code decoder MLP, log p* fwd + vjp x {n_eval}": 2 * 2 * macs(dec_layers) * n_eval,
        f"predictor MLP, log p* fwd + vjp x {n_eval}": 2 * 2 * macs(pred_layers) * n_eval,
        "final: priors + code decoder (p(z | h1))": 2 * (macs(prior_layers) + macs(dec_layers)),
        "final: marginal GroupedMLP decoders": 2 * _grouped_macs(model.marginal.decoder),
        "final: priors + decoder + predictor (target)": 2 * (macs(prior_layers) + macs(dec_layers) + macs(pred_layers)),
    }
    # acquisition's joint: the predictor once per feature set to its sampled code
    if "target_given" in {t.name for t in OUTPUTS}:
        per_chain["final: predictor x D feature variants (target_given)"] = 2 * dep.n_codes * macs(pred_layers)
    # The matmul shapes [M, K] x [K, N] of the sampler's evaluations (M = rows * samples): forward (in, out)
    # and vjp (out, in) of every layer, n_eval times each; they carry nearly all the FLOPs.
    shapes: dict[str, int] = defaultdict(int)
    for a, b in prior_layers + dec_layers + pred_layers:
        shapes[f"{a}x{b}"] += n_eval
        shapes[f"{b}x{a}"] += n_eval
    per_chain_total = sum(per_chain.values())
    per_row_total = sum(per_row.values()) + samples * per_chain_total
    sampler_flops = sum(v for k, v in per_chain.items() if "log p*" in k)
    return {
        "samples": samples,
        "log_density_evaluations_per_chain": n_eval,
        "per_row_networks": per_row,
        "per_chain_networks": per_chain,
        "per_chain_total": per_chain_total,
        "per_row_total": per_row_total,
        "per_row_by_network": {**per_row, **{k: v * samples for k, v in per_chain.items()}},
        "sampler_share": samples * sampler_flops / per_row_total,
        "sampler_matmul_shapes_KxN_count_per_chain": dict(shapes),
        "elementwise_ops": "ignored (SiLU + slope, scores, leapfrog and Metropolis updates are not counted)",
    }


def counted_flops(model, samples: int) -> dict[str, Any]:
    """Cross-check: matmul FLOPs per row of the actual PredictiveGraph, by torch's FlopCounterMode (1 row).

    It counts mm / addmm / bmm; GroupedMLP layers with one input (the marginal decoders' first layer) run as
    broadcast multiplies in torch and are not counted, so it reads slightly below the analytic count.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from hhvaem.model.export import PredictiveGraph, example_inputs

    graph = PredictiveGraph(model).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        graph(*example_inputs(model, 1, samples).values())
    return {
        "per_row_total": int(counter.get_total_flops()),
        "by_op": {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()},
    }


# ---- matmul rates -------------------------------------------------------------------------------------
def _ort_matmul_session(k: int, n: int, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "W"], ["C"])],
        "mm",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, ["M", n])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ort_matmul_rate(m: int, k: int, n: int, threads: int, min_seconds: float = 0.05) -> float:
    """FLOP/s of one ORT MatMul [m, k] x [k, n] (output pre-bound, so no allocation or copy is timed)."""
    import onnxruntime as ort

    sess = _ort_matmul_session(k, n, threads)
    a = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    io = sess.io_binding()
    io.bind_cpu_input("A", a)
    out = ort.OrtValue.ortvalue_from_numpy(np.empty((m, n), np.float32))
    io.bind_ortvalue_output("C", out)
    return _rate(lambda: sess.run_with_iobinding(io), 2.0 * m * k * n, min_seconds)


def numpy_matmul_rate(m: int, k: int, n: int, threads: int, min_seconds: float = 0.05) -> float:
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
    c = np.empty((m, n), np.float32)
    with threadpool_limits(threads):
        return _rate(lambda: np.matmul(a, b, out=c), 2.0 * m * k * n, min_seconds)


def torch_matmul_rate(m: int, k: int, n: int, threads: int, min_seconds: float = 0.05) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(m, k), torch.randn(k, n)
    c = torch.empty(m, n)
    return _rate(lambda: torch.mm(a, b, out=c), 2.0 * m * k * n, min_seconds)


def _rate(fn, flops: float, min_seconds: float) -> float:
    """Best-of-5 rounds, each long enough (>= min_seconds / 5) to average out timer noise."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-6)
    inner = max(1, int(min_seconds / 5 / once))
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return flops / best


def matmul_rates(flops: dict, ms: list[int], threads: int, quick: bool = False) -> dict[str, Any]:
    """Measured matmul FLOP/s: the sampler's own shapes per M, a representative [M, 64] x [64, 64], the peak."""
    peak_n, scale = (256, 0.05) if quick else (2048, 1.0)
    out: dict[str, Any] = {"threads": threads, "peak_square_n": peak_n, "peak": {}, "representative": {}}
    out["peak"]["ort"] = ort_matmul_rate(peak_n, peak_n, peak_n, threads, 0.3 * scale)
    out["peak"]["numpy_openblas"] = numpy_matmul_rate(peak_n, peak_n, peak_n, threads, 0.3 * scale)
    out["peak"]["torch_mkl"] = torch_matmul_rate(peak_n, peak_n, peak_n, threads, 0.3 * scale)
    shapes = flops["sampler_matmul_shapes_KxN_count_per_chain"]
    out["sampler_shapes_ort"] = {}
    for m in sorted(set(ms)):
        out["representative"][str(m)] = {
            "ort": ort_matmul_rate(m, 64, 64, threads, 0.05 * scale),
            "numpy_openblas": numpy_matmul_rate(m, 64, 64, threads, 0.05 * scale),
            "torch_mkl": torch_matmul_rate(m, 64, 64, threads, 0.05 * scale),
        }
        out["sampler_shapes_ort"][str(m)] = {
            s: ort_matmul_rate(m, *map(int, s.split("x")), threads, 0.03 * scale) for s in shapes
        }
    return out


def floor_seconds(flops: dict, rates: dict, rows: int, chunk: int) -> dict[str, float]:
    """Time 'rows' rows would take at the measured matmul rates with chunk rows per call (matmuls only)."""
    m = str(chunk * flops["samples"])
    total = rows * flops["per_row_total"]
    rep = rates["representative"][m]["ort"]
    # Per-shape: the sampler's matmuls at the rate ORT gets for that exact shape, the rest at the representative rate.
    per_shape, covered = 0.0, 0.0
    for s, count in flops["sampler_matmul_shapes_KxN_count_per_chain"].items():
        k, n = map(int, s.split("x"))
        f = 2.0 * k * n * count * flops["samples"] * rows
        per_shape += f / rates["sampler_shapes_ort"][m][s]
        covered += f
    per_shape += (total - covered) / rep
    return {
        "flops": total,
        "at_peak_s": total / rates["peak"]["ort"],
        "at_representative_s": total / rep,
        "at_sampler_shapes_s": per_shape,
        "representative_rate": rep,
        "peak_rate": rates["peak"]["ort"],
    }


# ---- ORT profile --------------------------------------------------------------------------------------
def ort_profile(graph: Path, feeds: dict[str, np.ndarray], threads: int, runs: int, workdir: Path) -> dict[str, Any]:
    """Per-op-type share of kernel time in single-row calls (ORT's built-in profiler)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_profiling = True
    opts.profile_file_prefix = str(workdir / "ort_profile")
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    for _ in range(3):
        sess.run(None, {k: feeds[k] for k in names})
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {k: feeds[k] for k in names})
        walls.append(time.perf_counter() - t0)
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs_seen = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    measured = runs_seen[-runs:]
    lo = min(e["ts"] for e in measured) if measured else 0
    by_op: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= lo:
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] += e["dur"]
            count[op] += 1
    kernel_us = sum(by_op.values())
    run_us = sum(e["dur"] for e in measured) or 1.0
    nodes = sum(count.values()) / max(len(measured), 1)
    top = sorted(by_op.items(), key=lambda kv: -kv[1])
    return {
        "runs": len(measured),
        "wall_ms_p50_with_profiler": float(np.median(walls) * 1000),
        "model_run_ms_mean": run_us / max(len(measured), 1) / 1000,
        "kernel_ms_mean": kernel_us / max(len(measured), 1) / 1000,
        "kernel_share_of_run": kernel_us / run_us,
        "nodes_per_run": nodes,
        "mean_us_per_node": run_us / max(len(measured), 1) / max(nodes, 1),
        "by_op_type": {
            op: {
                "share_of_kernel_time": us / kernel_us,
                "ms_per_run": us / max(len(measured), 1) / 1000,
                "nodes_per_run": count[op] / max(len(measured), 1),
            }
            for op, us in top[:15]
        },
    }


# ---- requests -----------------------------------------------------------------------------------------
def table_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for rec in df.to_dict("records"):
        rows.append({k: (None if _missing(v) else (v.item() if hasattr(v, "item") else v)) for k, v in rec.items()})
    return rows


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def impute_rows(rows, features: list[str], targets: list[str], n: int, seed: int) -> list[dict[str, Any]]:
    """n rows cycled from the table, each with about half its features and every target hidden."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        row = dict(rows[i % len(rows)])
        hide = rng.random(len(features)) < 0.5
        for name, h in zip(features, hide):
            if h:
                row[name] = None
        for t in targets:
            row[t] = None
        out.append(row)
    return out


def acquisition_rows(rows, features: list[str], targets: list[str], n: int, observed: int) -> list[dict[str, Any]]:
    """n rows with only the first `observed` features known (what an acquisition session starts from)."""
    keep = set(features[:observed])
    return [
        {k: (v if k in keep else None) for k, v in rows[i % len(rows)].items() if k in features or k in targets}
        for i in range(n)
    ]


# ---- measurements -------------------------------------------------------------------------------------
def measure_backend(engine, args, impute_set, acq_set, big_set, log) -> dict[str, Any]:
    from hhvaem.app.engine import ImputeQuery, NextFeaturesQuery

    out: dict[str, Any] = {"backend": engine.backend.name, "load_before": load()}
    share = CpuShare()
    reps, warm = args.reps, args.warmup

    # single-row impute, end to end and the parts
    out["impute_ms"] = stats_ms(timed(lambda i: engine.impute([impute_set[i]], samples=SAMPLES, seed=i), reps, warm))
    preps = [ImputeQuery([impute_set[i]], samples=SAMPLES, seed=i).prepare(engine) for i in range(min(reps, 50))]
    out["graph_ms"] = stats_ms(timed(lambda i: engine.backend.run(preps[i % len(preps)].feeds), reps, warm))
    parts = {"prepare": [], "graph": [], "finish": []}
    for i in range(min(reps, 50)):
        t0 = time.perf_counter()
        p = ImputeQuery([impute_set[i]], samples=SAMPLES, seed=i).prepare(engine)
        t1 = time.perf_counter()
        o = engine.backend.run(p.feeds)
        t2 = time.perf_counter()
        p.finish(engine.graph.named(o))
        t3 = time.perf_counter()
        parts["prepare"].append(t1 - t0)
        parts["graph"].append(t2 - t1)
        parts["finish"].append(t3 - t2)
    out["impute_parts_ms_p50"] = {k: stats_ms(v)["p50"] for k, v in parts.items()}
    out["numpy_overhead_ms_p50"] = out["impute_ms"]["p50"] - out["graph_ms"]["p50"]
    log(f"  impute p50 {out['impute_ms']['p50']:.2f} ms (graph {out['graph_ms']['p50']:.2f} ms)")

    # next features
    nf_reps = max(3, reps // 2)
    out["next_features_ms"] = stats_ms(
        timed(lambda i: engine.next_features(acq_set[i % len(acq_set)], samples=SAMPLES, seed=i), nf_reps, warm)
    )
    nf_parts = {"prepare": [], "graph": [], "finish": []}
    for i in range(min(nf_reps, 30)):
        t0 = time.perf_counter()
        p = NextFeaturesQuery(acq_set[i % len(acq_set)], samples=SAMPLES, seed=i).prepare(engine)
        t1 = time.perf_counter()
        o = engine.backend.run(p.feeds)
        t2 = time.perf_counter()
        p.finish(engine.graph.named(o))
        t3 = time.perf_counter()
        nf_parts["prepare"].append(t1 - t0)
        nf_parts["graph"].append(t2 - t1)
        nf_parts["finish"].append(t3 - t2)
    out["next_features_parts_ms_p50"] = {k: stats_ms(v)["p50"] for k, v in nf_parts.items()}
    log(f"  next-features p50 {out['next_features_ms']['p50']:.2f} ms")

    # throughput: graph only per chunk size, then end to end at the best chunk
    by_chunk = {}
    for chunk in args.chunks:
        feeds = [
            ImputeQuery(big_set[s : s + chunk], samples=SAMPLES, seed=s).prepare(engine).feeds
            for s in range(0, len(big_set), chunk)
        ]
        engine.backend.run(feeds[0])  # warm-up at this shape
        t0 = time.perf_counter()
        for f in feeds:
            engine.backend.run(f)
        wall = time.perf_counter() - t0
        by_chunk[str(chunk)] = {"seconds": wall, "rows_per_s": len(big_set) / wall}
        log(f"  throughput chunk {chunk}: {len(big_set) / wall:.1f} rows/s (graph only)")
        del feeds
    best = max(by_chunk, key=lambda c: by_chunk[c]["rows_per_s"])
    chunk = int(best)
    engine.impute(big_set[:chunk], samples=SAMPLES, seed=0)
    t0 = time.perf_counter()
    for s in range(0, len(big_set), chunk):
        engine.impute(big_set[s : s + chunk], samples=SAMPLES, seed=s)
    wall = time.perf_counter() - t0
    out["throughput"] = {
        "rows": len(big_set),
        "samples": SAMPLES,
        "graph_by_chunk": by_chunk,
        "best_chunk": chunk,
        "graph_rows_per_s": by_chunk[best]["rows_per_s"],
        "graph_seconds": by_chunk[best]["seconds"],
        "engine_rows_per_s": len(big_set) / wall,
        "engine_seconds": wall,
    }
    log(f"  throughput end to end (chunk {chunk}): {len(big_set) / wall:.1f} rows/s")
    out["load_after"] = load()
    out["cpu_share"] = share.stop()
    log(f"  other processes used {out['cpu_share']['other_processes_cores']:.2f} cores during this block")
    return out


def train_artifact(df, schema, steps: int, seed: int, out: Path, quick: bool, log) -> dict[str, Any]:
    """Trains the table's default architecture (quick: T = L = 2, so that the export takes seconds)."""
    from hhvaem.model.hhvaem import ModelConfig
    from hhvaem.training.artifact import data_fingerprint, write_artifact
    from hhvaem.training.fit import fit

    config = ModelConfig.for_table("hhvaem", len(schema.features), len(df))
    if quick:
        config.hmc_steps, config.leapfrog_steps = 2, 2
    t0 = time.perf_counter()
    fitted = fit(df, schema, "hhvaem", steps, seed, config=config, compile=False)
    t1 = time.perf_counter()
    manifest = write_artifact(out, fitted.model, fitted.preprocessor, fitted.history, data_fingerprint(df))
    export_seconds = manifest["graphs"]["sampler"]["export_seconds"]
    log(f"trained {steps} steps in {t1 - t0:.1f} s, exported in {export_seconds:.1f} s")
    return {"train_seconds": t1 - t0, "export_seconds": export_seconds, "steps": steps}


# ---- report -------------------------------------------------------------------------------------------
def _status(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def summarise_results(res: dict[str, Any]) -> None:
    """Adds ratios, floors and target verdicts to `res` in place."""
    o, t = res["backends"]["onnx"], res["backends"]["torch"]
    # speed-up = torch time / ORT time (> 1: ORT faster); ratio = ORT time / torch time.
    figures = {
        "impute_p50": (o["impute_ms"]["p50"], t["impute_ms"]["p50"]),
        "impute_p99": (o["impute_ms"]["p99"], t["impute_ms"]["p99"]),
        "graph_p50": (o["graph_ms"]["p50"], t["graph_ms"]["p50"]),
        "graph_p99": (o["graph_ms"]["p99"], t["graph_ms"]["p99"]),
        "next_features_p50": (o["next_features_ms"]["p50"], t["next_features_ms"]["p50"]),
        "next_features_p99": (o["next_features_ms"]["p99"], t["next_features_ms"]["p99"]),
        "throughput_graph": (1 / o["throughput"]["graph_rows_per_s"], 1 / t["throughput"]["graph_rows_per_s"]),
        "throughput_engine": (1 / o["throughput"]["engine_rows_per_s"], 1 / t["throughput"]["engine_rows_per_s"]),
    }
    res["ratios"] = {
        k: {"ort_over_torch_time": a / b, "ort_speedup": b / a} for k, (a, b) in figures.items() if a > 0 and b > 0
    }
    flops, rates = res["flops"], res["matmul_rates"]
    for b in res["backends"].values():
        tp = b["throughput"]
        fl = floor_seconds(flops, rates, tp["rows"], tp["best_chunk"])
        achieved = fl["flops"] / tp["graph_seconds"]
        single = floor_seconds(flops, rates, 1, 1)
        b["floor"] = {
            **fl,
            "achieved_flops_per_s": achieved,
            "fraction_of_representative_rate": achieved / fl["representative_rate"],
            "fraction_of_peak": achieved / fl["peak_rate"],
            "achieved_over_floor_time": tp["graph_seconds"] / fl["at_representative_s"],
            "achieved_over_sampler_shapes_floor_time": tp["graph_seconds"] / fl["at_sampler_shapes_s"],
            "single_row_floor_ms": single["at_representative_s"] * 1000,
            "single_row_floor_sampler_shapes_ms": single["at_sampler_shapes_s"] * 1000,
            "single_row_fraction_of_floor": single["at_representative_s"] * 1000 / b["graph_ms"]["p50"],
        }
    r = res["ratios"]
    res["targets"] = [
        {
            "name": "single-row impute p50 (ORT)",
            "target": f"<= {TARGETS['impute_p50_ms']:g} ms",
            "value": o["impute_ms"]["p50"],
            "pass": o["impute_ms"]["p50"] <= TARGETS["impute_p50_ms"],
        },
        {
            "name": "next-features p50 (ORT)",
            "target": f"<= {TARGETS['next_features_p50_ms']:g} ms",
            "value": o["next_features_ms"]["p50"],
            "pass": o["next_features_ms"]["p50"] <= TARGETS["next_features_p50_ms"],
        },
        *(
            {
                "name": f"ORT speed-up over torch eager, {k.replace('_', ' ')}",
                "target": f">= {TARGETS['ort_speedup']:g}x",
                "value": r[k]["ort_speedup"],
                "pass": r[k]["ort_speedup"] >= TARGETS["ort_speedup"],
            }
            for k in ("impute_p50", "next_features_p50", "throughput_graph")
        ),
        {
            "name": "batch throughput time / arithmetic floor (ORT, [M,64]x[64,64] rate)",
            "target": f"<= {TARGETS['floor_ratio']:g}x",
            "value": o["floor"]["achieved_over_floor_time"],
            "pass": o["floor"]["achieved_over_floor_time"] <= TARGETS["floor_ratio"],
        },
    ]


def markdown(res: dict[str, Any]) -> str:
    o, t = res["backends"]["onnx"], res["backends"]["torch"]
    r = res["ratios"]
    lines = [
        f"commit {res['commit']}; {res['machine']['cpu_model']}, {res['machine']['cores']} cores, "
        f"{res['settings']['threads']} threads; load average {res['machine']['load_start']} at start, "
        f"{res['machine']['load_end']} at end; other processes used "
        + ", ".join(
            f"{b['cpu_share']['other_processes_cores']:.2f} cores during the {n} block"
            for n, b in res["backends"].items()
        )
        + f", {res['matmul_rates']['cpu_share']['other_processes_cores']:.2f} during the matmul-rate block",
        "",
        "| figure | ORT (CPU) | torch eager (CPU) | ORT speed-up | target |",
        "|---|---:|---:|---:|---|",
    ]

    def row(name, a, b, fmt, key=None, target=""):
        sp = f"{r[key]['ort_speedup']:.2f}x" if key else ""
        lines.append(f"| {name} | {a:{fmt}} | {b:{fmt}} | {sp} | {target} |")

    ti, tn = TARGETS["impute_p50_ms"], TARGETS["next_features_p50_ms"]
    st_i = _status(o["impute_ms"]["p50"] <= ti)
    st_n = _status(o["next_features_ms"]["p50"] <= tn)
    st_sp = _status(r["impute_p50"]["ort_speedup"] >= TARGETS["ort_speedup"])
    row(
        "single-row impute p50, ms (100 samples)",
        o["impute_ms"]["p50"],
        t["impute_ms"]["p50"],
        ".2f",
        "impute_p50",
        f"<= {ti:g} ms: {st_i}; speed-up >= 2x: {st_sp}",
    )
    row("single-row impute p99, ms", o["impute_ms"]["p99"], t["impute_ms"]["p99"], ".2f", "impute_p99")
    row("bare graph call p50, ms (1 row)", o["graph_ms"]["p50"], t["graph_ms"]["p50"], ".2f", "graph_p50")
    row("bare graph call p99, ms (1 row)", o["graph_ms"]["p99"], t["graph_ms"]["p99"], ".2f", "graph_p99")
    row(
        "numpy around the graph (impute - graph) p50, ms", o["numpy_overhead_ms_p50"], t["numpy_overhead_ms_p50"], ".2f"
    )
    st_ns = _status(r["next_features_p50"]["ort_speedup"] >= TARGETS["ort_speedup"])
    row(
        f"next-features p50, ms ({res['settings']['observed_features']} of {res['model']['n_features']} observed)",
        o["next_features_ms"]["p50"],
        t["next_features_ms"]["p50"],
        ".2f",
        "next_features_p50",
        f"<= {tn:g} ms: {st_n}; speed-up >= 2x: {st_ns}",
    )
    row("next-features p99, ms", o["next_features_ms"]["p99"], t["next_features_ms"]["p99"], ".2f", "next_features_p99")
    ot, tt = o["throughput"], t["throughput"]
    st_t = _status(r["throughput_graph"]["ort_speedup"] >= TARGETS["ort_speedup"])
    row(
        f"throughput, graph only, rows/s ({ot['rows']} rows x {SAMPLES} samples)",
        ot["graph_rows_per_s"],
        tt["graph_rows_per_s"],
        ".1f",
        "throughput_graph",
        f"speed-up >= 2x: {st_t}",
    )
    lines.append(f"| best chunk, rows per call | {ot['best_chunk']} | {tt['best_chunk']} | | |")
    row(
        "throughput, end to end (Engine.impute), rows/s",
        ot["engine_rows_per_s"],
        tt["engine_rows_per_s"],
        ".1f",
        "throughput_engine",
    )
    of, tf = o["floor"], t["floor"]
    row(
        "achieved matmul GFLOP/s (throughput run)",
        of["achieved_flops_per_s"] / 1e9,
        tf["achieved_flops_per_s"] / 1e9,
        ".2f",
    )
    st_f = _status(of["achieved_over_floor_time"] <= TARGETS["floor_ratio"])
    row(
        "fraction of the floor, achieved / [M,64]x[64,64] rate",
        of["fraction_of_representative_rate"],
        tf["fraction_of_representative_rate"],
        ".3f",
        target=f"time / floor <= 2x: {st_f} ({of['achieved_over_floor_time']:.1f}x)",
    )
    row(
        "achieved time / floor time ([M,64]x[64,64] rate)",
        of["achieved_over_floor_time"],
        tf["achieved_over_floor_time"],
        ".1f",
    )
    row(
        "achieved time / floor time (sampler's own shapes)",
        of["achieved_over_sampler_shapes_floor_time"],
        tf["achieved_over_sampler_shapes_floor_time"],
        ".1f",
    )
    row("fraction of the large-sgemm peak", of["fraction_of_peak"], tf["fraction_of_peak"], ".3f")
    row(
        "single-row floor, ms ([100,64]x[64,64] rate) / fraction of graph p50",
        of["single_row_floor_ms"],
        of["single_row_fraction_of_floor"],
        ".2f",
    )
    fl, rates = res["flops"], res["matmul_rates"]
    lines += [
        "",
        f"Matmul FLOPs per row ({fl['samples']} chains, {fl['log_density_evaluations_per_chain']} log p* evaluations "
        "per chain; 2 FLOPs per multiply-add; elementwise ops ignored):",
        "",
        "| network | MFLOP per row | share |",
        "|---|---:|---:|",
    ]
    for k, v in fl["per_row_by_network"].items():
        lines.append(f"| {k} | {v / 1e6:.3f} | {v / fl['per_row_total']:.1%} |")
    lines.append(f"| **total** | **{fl['per_row_total'] / 1e6:.2f}** | 100% |")
    counted = fl.get("torch_flop_counter", {}).get("per_row_total")
    if counted:
        lines.append(f"| (cross-check: torch FlopCounterMode on the graph) | {counted / 1e6:.2f} | |")
    m1 = str(SAMPLES)
    mb = str(ot["best_chunk"] * SAMPLES)
    rep = rates["representative"]
    lines += [
        "",
        f"Matmul rates measured in this run ({rates['threads']} threads), GFLOP/s:",
        "",
        "| shape | ORT MatMul | numpy (OpenBLAS) | torch (MKL) |",
        "|---|---:|---:|---:|",
        f"| peak: [{rates['peak_square_n']}]^2 sgemm | {rates['peak']['ort'] / 1e9:.1f} | "
        f"{rates['peak']['numpy_openblas'] / 1e9:.1f} | {rates['peak']['torch_mkl'] / 1e9:.1f} |",
    ]
    for m in sorted({m1, mb}, key=int):
        lines.append(
            f"| [{m},64]x[64,64] | {rep[m]['ort'] / 1e9:.1f} | {rep[m]['numpy_openblas'] / 1e9:.1f} | "
            f"{rep[m]['torch_mkl'] / 1e9:.1f} |"
        )
    lines += ["", "| target | value | verdict |", "|---|---:|---|"]
    for tg in res["targets"]:
        lines.append(f"| {tg['name']} {tg['target']} | {tg['value']:.2f} | {_status(tg['pass'])} |")
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", type=Path, help="folder with data.csv (and schema.json)")
    ap.add_argument("--steps", type=int, help="training steps (default 500; quick 20; accuracy is irrelevant here)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--quick", action="store_true", help="tiny settings for tests: T = L = 2, 20 steps, 5 reps, 20 rows"
    )
    ap.add_argument("--artifact", type=Path, help="use this artifact instead of training one")
    ap.add_argument("--target", action="append", help="target column (when the table has no schema.json)")
    ap.add_argument("--reps", type=int, help="repetitions per latency figure (default 200; quick 5)")
    ap.add_argument("--rows", type=int, help="rows in the throughput run (default 1000; quick 20)")
    ap.add_argument("--chunks", type=int, nargs="+", help="rows per call to try (default 50 100 250)")
    ap.add_argument("--no-profile", dest="profile", action="store_false", help="skip the ORT profile")
    args = ap.parse_args(argv)
    args.reps = args.reps or (5 if args.quick else 200)
    args.warmup = 2 if args.quick else 10
    args.rows = args.rows or (20 if args.quick else 1000)
    args.chunks = args.chunks or ([5, 10] if args.quick else [50, 100, 250])
    args.steps = args.steps or (20 if args.quick else 500)

    import torch

    from hhvaem.app.engine import Engine, ImputeQuery
    from hhvaem.training.artifact import load_model
    from hhvaem.training.tabular import load_dataset

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    torch.set_num_threads(args.threads)
    res: dict[str, Any] = {
        "commit": commit(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m benchmarks.engine_latency " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "cpu_model": cpu_model(),
            "cpu_flags": cpu_flags(),
            "cores": os.cpu_count(),
            "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "load_start": load(),
            "platform": platform.platform(),
            "gpu": "none used: both backends run on CPU (no GPU lent to this task)",
        },
        "versions": versions(),
    }
    log(f"load average at start: {res['machine']['load_start']}")
    schema_file = args.table / "schema.json"
    df, schema = load_dataset(
        args.table / "data.csv", args.target or [], schema_file if schema_file.is_file() else None
    )
    features = [c.name for c in schema.features]
    targets = [c.name for c in schema.targets]
    with tempfile.TemporaryDirectory(prefix="engine_latency_") as tmp:
        tmp = Path(tmp)
        if args.artifact is not None and args.artifact.is_dir():
            artifact = args.artifact
            res["training"] = {"reused_artifact": str(artifact)}
        else:
            artifact = args.artifact or tmp / "model"
            res["training"] = train_artifact(df, schema, args.steps, 0, artifact, args.quick, log)
        model, _, manifest = load_model(artifact)
        arch = manifest["architecture"]
        res["model"] = {
            "variant": arch["variant"],
            "latent_dims": arch["latent_dims"],
            "hidden": arch["hidden"],
            "marginal_hidden": arch["marginal_hidden"],
            "hmc_steps": manifest["sampler"]["hmc_steps"],
            "leapfrog_steps": manifest["sampler"]["leapfrog_steps"],
            "n_features": len(features),
            "n_targets": len(targets),
            "graph_bytes": (artifact / "sampler.onnx").stat().st_size,
        }
        observed = max(1, min(3, len(features) - 1))
        res["settings"] = {
            "threads": args.threads,
            "samples": SAMPLES,
            "reps": args.reps,
            "warmup": args.warmup,
            "throughput_rows": args.rows,
            "chunks": args.chunks,
            "observed_features": observed,
            "quick": args.quick,
            "steps": args.steps,
            "ort_session": "Engine defaults: ORT_ENABLE_ALL, intra_op_num_threads = threads",
            "torch": "eager, torch.inference_mode, set_num_threads(threads)",
        }
        rows = table_rows(df)
        impute_set = impute_rows(rows, features, targets, max(args.reps, 50), seed=1)
        acq_set = acquisition_rows(rows, features, targets, 50, observed)
        big_set = impute_rows(rows, features, targets, args.rows, seed=2)

        res["flops"] = flop_count(model, SAMPLES)
        res["flops"]["torch_flop_counter"] = counted_flops(model, SAMPLES)
        log(f"matmul FLOPs per row: {res['flops']['per_row_total'] / 1e6:.1f} M")
        res["backends"] = {}
        for name in BACKENDS:
            log(f"{name}: load {load()}")
            engine = Engine(artifact, backend=name, device="cpu", threads=args.threads)
            res["backends"][name] = measure_backend(engine, args, impute_set, acq_set, big_set, log)
            if name == "onnx" and args.profile:
                feeds = ImputeQuery([impute_set[0]], samples=SAMPLES, seed=0).prepare(engine).feeds
                res["ort_profile_single_row"] = ort_profile(
                    artifact / engine.graph.file, feeds, args.threads, 5 if args.quick else 30, tmp
                )
            del engine
        log(f"matmul rates: load {load()}")
        ms = [SAMPLES] + [c * SAMPLES for c in args.chunks]
        share = CpuShare()
        res["matmul_rates"] = matmul_rates(res["flops"], ms, args.threads, args.quick)
        res["matmul_rates"]["cpu_share"] = share.stop()
    res["machine"]["load_end"] = load()
    summarise_results(res)
    table = markdown(res)
    res["markdown"] = table
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2, default=float))
    return res


if __name__ == "__main__":
    main()
