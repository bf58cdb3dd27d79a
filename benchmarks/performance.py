"""Serving speed, measured: the sampler graphs before and after each optimisation, latency, throughput against
the matrix-product floor, torch against ONNX Runtime, and how many posterior samples an answer needs.

    python -m benchmarks.performance run ../shared/data/uci/boston --json docs/performance.json
    python -m benchmarks.performance render docs/performance.json > docs/performance.md

Everything runs on one thread (ONNX Runtime intra-op 1, torch 1, BLAS 1) in this process; variants are timed in
alternating rounds so that background load hits them alike, and ratios are taken within one run. The load
average is recorded before and after. "Before" is the sampler graph of commit ad2fbd5 (one graph with the
predictor inside log p* and every output), exported from the same checkpoint by that commit's code in a temporary
git worktree; each optimisation's effect is measured by exporting the current graph with that one change undone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

BEFORE = "ad2fbd5"
SAMPLES = 100


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def ms(seconds: list[float]) -> dict[str, float]:
    a = np.asarray(seconds) * 1000
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "n": int(a.size)}


def interleaved(fns: dict[str, Any], reps: int, rounds: int = 5, warmup: int = 3) -> dict[str, dict[str, float]]:
    """p50/p99 of each callable, timed in alternating rounds (background load falls on all of them alike)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    per = max(1, reps // rounds)
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(0.02)
            for _ in range(per):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {k: ms(v) for k, v in times.items()}


# ---- graphs --------------------------------------------------------------------------------------------------
def ort_session(path: Path, optimized: Path | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def graph_facts(path: Path, tmp: Path) -> dict[str, Any]:
    import onnx

    optimized = tmp / f"{path.stem}.opt.onnx"
    ort_session(path, optimized)
    nodes = onnx.load(str(optimized)).graph.node
    ops = Counter(n.op_type for n in nodes)
    return {"exported_nodes": len(onnx.load(str(path)).graph.node), "nodes": len(nodes), "ops": dict(ops.most_common())}


@contextlib.contextmanager
def undone(change: str):
    """The current code with one optimisation undone (for measuring its effect)."""
    import torch
    import torch.nn.functional as F

    from hhvaem.model import likelihoods, nets, posterior

    saved = []

    def patch(obj, name, value):
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    if change == "softplus kernel":  # ONNX Runtime's Softplus and a separate Sigmoid

        def sp(raw):
            return F.softplus(raw), torch.sigmoid(raw)

        patch(likelihoods, "softplus_and_sigmoid", sp)
    elif change == "3-D matrix products":  # rows x chains not folded: no Gemm fusion
        original = posterior.sample_posterior

        def sample(*a, **kw):
            kw["flat"] = False
            return original(*a, **kw)

        import hhvaem.model.export as export

        patch(export, "sample_posterior", sample)
    elif change == "Einsum marginal decoders":

        def forward(self, x):
            last = len(self.weights) - 1
            for i, (w, b) in enumerate(zip(self.weights, self.biases)):
                x = torch.einsum("...gi,gio->...go", x, w) + b
                if i < last:
                    x = F.silu(x)
            return x

        patch(nets.GroupedMLP, "forward", forward)
    try:
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


def export_variant(model, graph_name: str, change: str | None, path: Path) -> Path:
    from hhvaem.model.export import export_graph, graphs_of

    with undone(change) if change else contextlib.nullcontext():
        export_graph(model, graphs_of(model)[graph_name], path)
    return path


OLD_EXPORT = """
import sys, dataclasses, torch
from model.hhvaem import HHVAEM, ModelConfig
from model.schema import Schema
from model.export import export_predictive
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
fields = {f.name for f in dataclasses.fields(ModelConfig)}
config = ModelConfig(**{k: v for k, v in ckpt["config"].items() if k in fields and v is not None})
model = HHVAEM(Schema.from_dict(ckpt["schema"]), config)
model.load_state_dict(ckpt["state_dict"], strict=False)  # the old code's buffers come from the schema
export_predictive(model.eval(), sys.argv[2])
"""


def paper_twin(model, seed: int = 0):
    """The model in the configuration commit BEFORE also runs (marginal codes for every feature, SiLU): the same
    weights when it already is, else fresh ones of the same sizes (graph timing does not depend on the weights)."""
    import torch

    from hhvaem.model.hhvaem import HHVAEM, ModelConfig

    cfg = model.config
    if cfg.discrete_units == "marginal" and cfg.activation == "silu":
        return model
    torch.manual_seed(seed)
    twin = HHVAEM(model.schema, ModelConfig(**{**cfg.to_dict(), "discrete_units": "marginal", "activation": "silu"}))
    twin.log_step_sizes.data.copy_(model.log_step_sizes.data)
    twin.log_inflation.data.copy_(model.log_inflation.data)
    return twin.eval()


def twin_checkpoint(model, path: Path) -> Path:
    """The paper-configuration model's checkpoint (commit BEFORE lays the dependency decoder's output out as this
    code does for it: [loc (D) | raw scale (D)])."""
    import torch

    torch.save(
        {"config": model.config.to_dict(), "schema": model.schema.to_dict(), "state_dict": model.state_dict()}, path
    )
    return path


def export_before(checkpoint: Path, path: Path, log) -> Path | None:
    """The sampler graph of commit BEFORE from the same checkpoint, by that commit's code (a git worktree)."""
    tree = path.parent / "before-tree"
    made = subprocess.run(["git", "worktree", "add", "--detach", str(tree), BEFORE], capture_output=True, text=True)
    if made.returncode != 0:
        log(f"before: no worktree of {BEFORE} ({made.stderr.strip()[:200]})")
        return None
    try:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        res = subprocess.run(
            [sys.executable, "-c", OLD_EXPORT, str(checkpoint), str(path)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tree,  # the old code's top-level packages, not this checkout's folders
        )
        if res.returncode != 0:
            log(f"before: export failed ({res.stderr.strip()[-300:]})")
            return None
        return path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], capture_output=True)


# ---- FLOPs and the floor --------------------------------------------------------------------------------------
def graph_flops(model, graph_name: str) -> int:
    """Matrix-product FLOPs of one row (SAMPLES samples) of a graph, counted by torch on the traced module."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from hhvaem.model.export import PredictiveGraph, example_inputs, graphs_of

    spec = graphs_of(model)[graph_name]
    module = PredictiveGraph(model, spec).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*example_inputs(model, spec, rows=1, samples=SAMPLES).values())
    return int(counter.get_total_flops())


def sgemm_peak() -> float:
    """FLOP/s of a large single-precision matrix product on one thread (ONNX Runtime's MatMul, MLAS)."""
    import onnx
    from onnx import TensorProto, helper

    n = 1024
    g = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "mm",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mm.onnx"
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        s = ort_session(path)
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        best = min(_time(lambda: s.run(None, {"a": a, "b": a})) for _ in range(10))
    return 2 * n**3 / best


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---- the measurements ------------------------------------------------------------------------------------------
ROWS = [
    {"CRIM": 0.3, "RM": 6.2, "AGE": 70.0, "LSTAT": 12.0},
    {"NOX": 0.5, "TAX": 300.0},
    {"RM": 7.1, "PTRATIO": 16.0, "DIS": 4.0},
]


def rows_for(engine, n: int) -> list[dict]:
    """n rows of a few observed features each (the model's own feature names where the defaults do not fit)."""
    names = [c.name for c in engine.schema.features]
    base = [{k: v for k, v in r.items() if k in names} for r in ROWS]
    if not any(base):
        base = [{names[0]: 1.0}, {names[-1]: 1.0}, {}]
    return [base[i % len(base)] for i in range(n)]


def variant_table(
    model, engine, art: Path, tmp: Path, reps: int, log, with_before: bool = True, quick: bool = False
) -> dict[str, Any]:
    """Node counts and one-row / hundred-row graph latency of the impute graph: before, after (same configuration),
    each optimisation undone, and the served model's own graphs (its defaults)."""
    import torch

    from hhvaem.app.engine import ImputeQuery
    from hhvaem.model.hhvaem import HHVAEM, ModelConfig

    twin = paper_twin(model)
    files: dict[str, Path] = {}
    if with_before:
        before = export_before(twin_checkpoint(twin, tmp / "twin.pt"), tmp / "before.onnx", log)
        if before:
            files[f"before ({BEFORE})"] = before
    files["after, paper configuration"] = export_variant(twin, "impute", None, tmp / "after.onnx")
    # --quick (the tests) exports one undone optimisation and one other configuration: exporting is most of its time
    undone = ["3-D matrix products"] + ([] if quick else ["softplus kernel", "Einsum marginal decoders"])
    for change in undone:
        files[f"with {change}"] = export_variant(twin, "impute", change, tmp / f"{change.replace(' ', '_')}.onnx")
    cfg = twin.config.to_dict()
    changes = {"tanh": {"activation": "tanh"}}
    if not quick:
        changes["tanh, direct discrete units"] = {"activation": "tanh", "discrete_units": "direct"}
    for i, (name, change) in enumerate(changes.items()):  # fresh weights: timing does not depend on them
        torch.manual_seed(0)
        other = HHVAEM(twin.schema, ModelConfig(**{**cfg, **change})).eval()
        files[f"after, {name}"] = export_variant(other, "impute", None, tmp / f"change{i}.onnx")
    served = f"served model ({model.config.activation}, {model.config.discrete_units} discrete units)"
    files[served] = art / engine.graphs["impute"].file
    files["served model, with the predictor in log p*"] = art / engine.graphs["conditional"].file
    out: dict[str, Any] = {name: graph_facts(path, tmp) for name, path in files.items()}
    for n, r in ((1, reps),) if quick else ((1, reps), (100, max(3, reps // 20))):
        prep = ImputeQuery(rows_for(engine, n), samples=SAMPLES, seed=0).prepare(engine)
        sessions = {name: ort_session(path) for name, path in files.items()}

        timings = interleaved({name: graph_call(sessions[name], prep.feeds) for name in files}, r)
        for name, t in timings.items():
            out[name][f"rows{n}_ms"] = t
        log(f"variants at {n} row(s): " + ", ".join(f"{k} {v['p50']:.1f} ms" for k, v in timings.items()))
    return out


def graph_call(session, feeds: dict[str, np.ndarray]):
    """A callable running `session` on the feeds it takes (the before graph calls eps_noise "noise")."""
    wanted = {i.name for i in session.get_inputs()}
    given = {k: v for k, v in feeds.items() if k in wanted}
    if "noise" in wanted:
        given["noise"] = feeds["eps_noise"]
    return lambda: session.run(None, given)


def latency_table(art: Path, reps: int, log) -> dict[str, Any]:
    """End-to-end engine latency of the three questions for one row, ONNX Runtime against torch eager."""
    from hhvaem.app.engine import Engine

    engines = {b: Engine(art, backend=b, device="cpu", threads=1) for b in ("onnx", "torch")}
    out = {}
    for b, e in engines.items():
        row = rows_for(e, 1)[0]
        fns = {
            "impute": lambda e=e, row=row: e.impute([row], samples=SAMPLES, seed=1),
            "predict": lambda e=e, row=row: e.predict([row], samples=SAMPLES, seed=1),
            "next-features": lambda e=e, row=row: e.next_features(row, samples=SAMPLES, seed=1),
        }
        out[b] = interleaved(fns, reps if b == "onnx" else max(10, reps // 4))
        log(f"{b}: " + ", ".join(f"{k} p50 {v['p50']:.1f} ms" for k, v in out[b].items()))
    return out


def throughput_table(art: Path, flops_per_row: int, peak: float, quick: bool, log) -> list[dict[str, Any]]:
    """Rows per second of the impute graph against rows per call, both backends, and the ratio to the floor."""
    from hhvaem.app.engine import Engine, ImputeQuery

    engines = {b: Engine(art, backend=b, device="cpu", threads=1) for b in ("onnx", "torch")}
    for e in engines.values():
        e.chains_per_call = 10**9  # one graph call per measurement, whatever its size
    out = []
    for n in (1, 10) if quick else (1, 10, 30, 100, 300, 1000):
        prep = ImputeQuery(rows_for(engines["onnx"], n), samples=SAMPLES, seed=0).prepare(engines["onnx"])
        reps = 3 if quick else max(3, min(40, 4000 // (n * 10)))
        calls = {b: (lambda e=e, p=prep: e.call("impute", [p])) for b, e in engines.items()}
        timing = interleaved(calls, reps, rounds=3)
        floor = n * flops_per_row / peak
        entry = {"rows": n, "samples": SAMPLES, "floor_ms": 1000 * floor}
        for b, t in timing.items():
            entry[b] = {"ms": t["p50"], "rows_per_s": n / (t["p50"] / 1000), "x_floor": t["p50"] / 1000 / floor}
        out.append(entry)
        log(
            f"{n} rows: onnx {entry['onnx']['ms']:.1f} ms ({entry['onnx']['x_floor']:.2f}x floor), torch "
            f"{entry['torch']['ms']:.1f} ms"
        )
    return out


def sample_study(art: Path, table: Path, quick: bool, log) -> list[dict[str, Any]]:
    """How many posterior samples an answer needs: Monte Carlo error of means and quantiles, and the stability of
    the next-question ranking across seeds, against the sample count."""
    import pandas as pd

    from hhvaem.app.engine import Engine

    engine = Engine(art, threads=1)
    df = pd.read_csv(table / "data.csv")
    features = [c.name for c in engine.schema.features]
    rng = np.random.default_rng(0)
    rows = []
    for r in df.sample(3 if quick else 20, random_state=0).to_dict("records"):
        keep = rng.random(len(features)) < 0.5
        rows.append({f: r[f] for f, k in zip(features, keep) if k})
    seeds = range(2 if quick else 8)
    out = []
    for k in (10, 100) if quick else (10, 25, 50, 100, 200, 500, 1000):
        imputed = engine.impute(rows, samples=k, seed=0)
        rel_mean, rel_q = [], []
        for row in imputed:
            for s in row["imputed"].values():
                if "std" in s and s["std"] > 0:
                    rel_mean.append(s["mean_se"] / s["std"])
                    rel_q.append(np.mean(list(s["quantiles_se"].values())) / s["std"])
        agree, ties, rel_gain = [], [], []
        for row in rows:
            answers = [engine.next_features(row, samples=k, seed=s) for s in seeds]
            tops = [a["ranking"][0]["feature"] for a in answers if a["ranking"]]
            if not tops:
                continue
            agree.append(Counter(tops).most_common(1)[0][1] / len(tops))
            ties.append(np.mean([a["tie"]["tied"] for a in answers]))
            best = answers[0]["ranking"][0]
            rel_gain.append(best["gain_se"] / best["gain"] if best["gain"] > 0 and best["gain_se"] else np.nan)
        t0 = time.perf_counter()
        engine.next_features(rows[0], samples=k, seed=0)
        entry = {
            "samples": k,
            "mean_se_over_std": float(np.mean(rel_mean)),
            "quantile_se_over_std": float(np.mean(rel_q)),
            "top_question_agreement": float(np.mean(agree)),
            "tie_rate": float(np.mean(ties)),
            "top_gain_relative_se": float(np.nanmean(rel_gain)),
            "next_features_ms": 1000 * (time.perf_counter() - t0),
        }
        out.append(entry)
        log(
            f"K={k}: mean SE/sd {entry['mean_se_over_std']:.3f}, top-question agreement "
            f"{entry['top_question_agreement']:.2f}, ties {entry['tie_rate']:.2f}"
        )
    return out


def train_model(table: Path, steps: int, out: Path, log) -> Path:
    from hhvaem.training.artifact import data_fingerprint, write_artifact
    from hhvaem.training.fit import fit
    from hhvaem.training.tabular import load_dataset

    df, schema = load_dataset(table / "data.csv", [], table / "schema.json")
    t0 = time.perf_counter()
    fitted = fit(df, schema, "hhvaem", steps, seed=0)
    write_artifact(out, fitted.model, fitted.preprocessor, fitted.history, data_fingerprint(df))
    log(f"trained {steps} steps in {time.perf_counter() - t0:.0f} s")
    return out


def cmd_run(args) -> None:
    import torch

    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    from hhvaem.app.engine import Engine
    from hhvaem.training.artifact import load_model

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    res: dict[str, Any] = {
        "command": "python -m benchmarks.performance " + " ".join(sys.argv[1:]),
        "commit": commit(),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
        "load_before": load(),
    }
    with threadpool_limits(1), tempfile.TemporaryDirectory(prefix="perf-") as tmp_name:
        tmp = Path(tmp_name)
        art = args.artifact or train_model(args.table, args.steps, tmp / "model", log)
        model, _, manifest = load_model(art)
        engine = Engine(art, threads=1)
        res["model"] = {
            **manifest["architecture"],
            **{k: manifest["sampler"][k] for k in ("hmc_steps", "leapfrog_steps")},
        }
        res["peak_flops"] = sgemm_peak()
        res["flops_per_row"] = {g: graph_flops(model, g) for g in ("impute", "acquire", "conditional")}
        log(f"sgemm peak {res['peak_flops'] / 1e9:.0f} GFLOP/s; FLOPs per row {res['flops_per_row']}")
        res["variants"] = variant_table(model, engine, art, tmp, args.reps, log, args.before, args.quick)
        res["latency"] = latency_table(art, args.reps, log)
        res["throughput"] = throughput_table(art, res["flops_per_row"]["impute"], res["peak_flops"], args.quick, log)
        res["samples"] = sample_study(art, args.table, args.quick, log)
    res["load_after"] = load()
    text = json.dumps(res, indent=1)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)


# ---- the report -----------------------------------------------------------------------------------------------
def render(res: dict[str, Any]) -> str:
    m, peak = res["model"], res["peak_flops"]
    fl = res["flops_per_row"]
    lines = [
        "# Serving performance",
        "",
        f"Generated by `{res['command']}` then `python -m benchmarks.performance render`, commit {res['commit']}, "
        f"{res['machine']['cpu']} ({res['machine']['cores']} cores), one thread everywhere, load average "
        f"{res['load_before']} before and {res['load_after']} after. Model: boston, variant {m['variant']}, latent "
        f"{m['latent_dims']}, hidden {m['hidden']}, T = {m['hmc_steps']}, L = {m['leapfrog_steps']}; "
        f"{SAMPLES} posterior samples per row unless said.",
        "",
        "## The floor",
        f"Matrix-product FLOPs per row ({SAMPLES} samples), counted by torch on the exported modules: impute "
        f"{fl['impute'] / 1e6:.0f} M, acquire {fl['acquire'] / 1e6:.0f} M, "
        f"conditional {fl['conditional'] / 1e6:.0f} M. "
        f"Single-thread sgemm peak measured in the same run: {peak / 1e9:.0f} GFLOP/s, so the floor for one row of "
        f"the impute graph is {1000 * fl['impute'] / peak:.2f} ms.",
        "",
        "## The graphs, before and after, and each optimisation undone",
        "",
        "| graph | exported nodes | nodes after ONNX Runtime's optimisation | 1 row (ms, p50) | 100 rows (ms, p50) |"
        " top ops |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in res["variants"].items():
        top = ", ".join(f"{k} {n}" for k, n in list(v["ops"].items())[:6])
        hundred = f"{v['rows100_ms']['p50']:.1f}" if "rows100_ms" in v else "-"
        lines.append(
            f"| {name} | {v['exported_nodes']} | {v['nodes']} | {v['rows1_ms']['p50']:.2f} | {hundred} | {top} |"
        )
    lines += [
        "",
        "## Engine latency, one row (end to end: encode, noise, graph, summaries)",
        "",
        "| question | ONNX Runtime p50 / p99 (ms) | torch eager p50 / p99 (ms) |",
        "|---|---|---|",
    ]
    for q in res["latency"]["onnx"]:
        o, t = res["latency"]["onnx"][q], res["latency"]["torch"][q]
        lines.append(f"| {q} | {o['p50']:.2f} / {o['p99']:.2f} | {t['p50']:.2f} / {t['p99']:.2f} |")
    lines += [
        "",
        "## Throughput of the impute graph against rows per call",
        "",
        "| rows x samples | floor (ms) | ONNX Runtime (ms, rows/s, x floor) | torch eager (ms, rows/s, x floor) |",
        "|---|---|---|---|",
    ]
    for t in res["throughput"]:
        o, e = t["onnx"], t["torch"]
        lines.append(
            f"| {t['rows']} x {t['samples']} | {t['floor_ms']:.1f} | {o['ms']:.1f}, {o['rows_per_s']:.0f}, "
            f"{o['x_floor']:.2f} | {e['ms']:.1f}, {e['rows_per_s']:.0f}, {e['x_floor']:.2f} |"
        )
    lines += [
        "",
        "## How many posterior samples an answer needs",
        "",
        "Monte Carlo standard errors (batch means over groups of the independent chains) relative to the predictive "
        "standard deviation, averaged over the holes of 20 table rows with half their features observed; the "
        "next-question ranking over 8 seeds per row: how often the most common first choice wins, how often the "
        "first two are tied within noise (`tie`), the first gain's relative standard error.",
        "",
        "| samples | mean SE / sd | quantile SE / sd | top question agreement | tie rate | top gain SE / gain |"
        " next-features (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in res["samples"]:
        lines.append(
            f"| {s['samples']} | {s['mean_se_over_std']:.3f} | {s['quantile_se_over_std']:.3f} | "
            f"{s['top_question_agreement']:.2f} | {s['tie_rate']:.2f} | {s['top_gain_relative_se']:.2f} | "
            f"{s['next_features_ms']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def render_load(load: dict[str, Any]) -> str:
    """The service against the engine on the same cores (benchmarks/load_test.py's JSON)."""
    lines = [
        f"## The service against the engine (batching window {load.get('batch_window_ms', 2.0):g} ms)",
        "",
        f"`python -m benchmarks.load_test` at commit {load['commit']}, {load['machine']['cpus']} cores, "
        f"{load['settings']['samples']} samples per request, load average {_rounded(load.get('load_before'))} before "
        f"and {_rounded(load.get('load_after'))} after. Engine: one request at a time, and its best batched "
        "throughput (one sampler call of 20 rows per core at a time).",
        "",
        "| route | concurrency | requests/s | p50 (ms) | p99 (ms) | engine p50 (ms) | engine best batched (rows/s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for work, levels in load["http"].items():
        e = load["engine"][work]
        best = f"{e['batched_rows_per_s']:.0f}" if "batched_rows_per_s" in e else "-"
        for r in levels:
            lines.append(
                f"| {work} | {r['concurrency']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{e['p50_ms']:.1f} | {best} |"
            )
    lines += [
        "",
        "| route | HTTP overhead at 1 (target <= 20 %) | throughput at 32 / engine best (target >= 0.8) |"
        " p99 at 32 / single p50 (target <= 5) |",
        "|---|---|---|---|",
    ]
    for work, c in load["checks"].items():
        vs = c.get("throughput_vs_engine_batched")
        lines.append(
            f"| {work} | {c['overhead_at_1']:+.0%} | {'-' if vs is None else f'{vs:.2f}'} | "
            f"{c['p99_over_single_p50']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _rounded(load) -> str:
    return "?" if load is None else str([round(x, 2) for x in load])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("table", type=Path, help="a table folder (data.csv + schema.json)")
    run.add_argument("--artifact", type=Path, help="an artifact to measure instead of training one")
    run.add_argument("--steps", type=int, default=1000, help="training steps of the measured model")
    run.add_argument("--reps", type=int, default=200)
    run.add_argument("--quick", action="store_true", help="fewer sizes, samples and seeds (tests)")
    run.add_argument("--no-before", dest="before", action="store_false", help=f"skip the graph of commit {BEFORE}")
    run.add_argument("--json", type=Path)
    rd = sub.add_parser("render")
    rd.add_argument("json", type=Path)
    rd.add_argument("--load", type=Path, nargs="*", help="benchmarks/load_test.py JSON files (service section)")
    rd.add_argument("--notes", type=Path, help="markdown appended after the tables (the analysis)")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        cmd_run(args)
    else:
        text = render(json.loads(args.json.read_text()))
        for load_json in args.load or []:
            text += "\n" + render_load(json.loads(load_json.read_text()))
        if args.notes:
            text += "\n" + args.notes.read_text().rstrip() + "\n"
        print(text)


if __name__ == "__main__":
    main()
