"""The `hhvaem` command line. Every command has --help; bad input exits 2 with a one-line reason."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from hhvaem.model.io.contract import CHUNK_ROWS

app = typer.Typer(add_completion=False, no_args_is_help=True, help="HH-VAEM for tables with missing values.")

Data = Annotated[Path, typer.Argument(help="Training table: .csv or .parquet, header row, empty/NA cells missing.")]
SchemaOpt = Annotated[
    Path | None,
    typer.Option(
        "--schema",
        help="JSON schema (features/targets with types) overriding inference for the columns it names; the others "
        "are inferred.",
    ),
]
IgnoreExtraOpt = Annotated[
    bool,
    typer.Option("--ignore-extra", help="Use only the columns --schema names (and the targets); leave the rest out."),
]
DropOpt = Annotated[
    list[str] | None,
    typer.Option("--drop", help="Leave this column out, e.g. an identifier (repeat for several).", show_default=False),
]
NonNumericOpt = Annotated[
    bool,
    typer.Option(
        "--non-numeric-as-missing",
        help="Read text cells in numeric columns as missing (each one listed in a warning) instead of refusing.",
    ),
]
TargetOpt = Annotated[
    list[str] | None, typer.Option("--target", help="Target column (repeat for several).", show_default=False)
]
VariantOpt = Annotated[str, typer.Option("--variant", help="hhvaem | vaem | hvaem | hmcvaem | miwaem")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed: the same seed reproduces the model.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=0,
        help="CPU threads for torch and the BLAS/OpenMP pools (default: the cores free now, i.e. the usable cores "
        "minus the 1-minute load average, at least 1; 0: the libraries' defaults).",
        show_default=False,
    ),
]
CompileOpt = Annotated[
    bool | None,
    typer.Option(
        "--compile/--no-compile",
        help="torch.compile the HMC sampler for training (default: when there are >= 500 HMC steps).",
        show_default=False,
    ),
]


StepsOpt = Annotated[
    int | None,
    typer.Option(
        "--steps",
        min=10,
        help="Dependency-VAE steps, the last 10% with HMC (default: 100 x sqrt(rows), between 3000 and 20000).",
        show_default=False,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a model or training setting, KEY=VALUE (repeat), e.g. --set hidden=128 --set lr=3e-4.",
        show_default=False,
    ),
]


def _overrides(pairs: list[str] | None) -> dict:
    """--set KEY=VALUE pairs -> {key: value}, values parsed as JSON where they parse (numbers, lists), else text."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail(f"--set: {pair!r} is not KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@contextmanager
def user_errors():
    """Turns the library's input errors into a one-line message and exit status 2 (no traceback)."""
    from hhvaem.model.io.artifact import ArtifactError
    from hhvaem.model.io.tables import TableError
    from hhvaem.model.preprocessing import EncodingError
    from hhvaem.model.schema import SchemaError

    try:
        yield
    except (TableError, SchemaError, EncodingError, ArtifactError, ValueError, OSError) as e:
        fail(str(e))


class StageProgress:
    """Training progress on stderr, with each stage's measured step rate and time left (training/progress.py): on a
    terminal one rich bar per stage; anywhere else (a log file, a pipe, `docker logs`) a line at each stage's first
    step, then one every `every_seconds`, and one at its end. Stage 3's one-off compile is announced before it
    starts, with its expected time, and its actual time is printed after. `stages` ({stage: steps}) lets a line
    name the stage that comes next."""

    def __init__(self, prefix: str = "", every_seconds: float = 10.0, stages: dict[str, int] | None = None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from hhvaem.training.progress import LineProgress

        self.prefix = prefix
        self.lines = LineProgress(None, prefix, every_seconds, stages)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[rate]}, {task.fields[eta]}"),
            console=Console(stderr=True),
            disable=not sys.stderr.isatty(),
        )
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, step: int, total: int, loss: float) -> None:
        from hhvaem.training.progress import STAGE_NAMES, duration

        if self.progress.disable:
            self.lines(stage, step, total, loss)
            return
        clock = self.lines.clock
        clock.update(stage, step, total)
        if stage not in self.tasks:
            name = f"{self.prefix}{STAGE_NAMES[stage]}"
            self.tasks[stage] = self.progress.add_task(name, total=total, loss=loss, rate="", eta="")
        left = clock.eta()
        eta = "done" if step == total else "ETA: measuring" if left is None else f"ETA {duration(left)}"
        self.progress.update(self.tasks[stage], completed=step, loss=loss, rate=clock.rate_text(), eta=eta)
        if step == total:
            clock.end_stage()

    def compiling(self, expected: str) -> None:
        self._notice(self.lines.compiling, expected)

    def compiled(self, seconds: float) -> None:
        self._notice(self.lines.compiled, seconds)

    def _notice(self, event, value) -> None:
        if self.progress.disable:
            event(value)
            return
        stream = self.lines.stream
        self.lines.stream = _ConsoleLines(self.progress.console)  # printed above the bars
        try:
            event(value)
        finally:
            self.lines.stream = stream

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)


class _ConsoleLines:
    """A text stream onto a rich console (lines printed while its progress bars stay at the bottom)."""

    def __init__(self, console):
        self.console = console

    def write(self, text: str) -> None:
        if text.strip():
            self.console.print(text.rstrip("\n"), highlight=False, markup=False)

    def flush(self) -> None:
        pass


def free_cores() -> int:
    """The cores this process may use (affinity, and a container's CPU quota) minus the 1-minute load average, at
    least 1: on a busy machine, threads beyond the free cores only take turns (oversubscribed, torch's small
    matrix products ran 4-9x slower than on one thread)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    cores = min(cores, _cpu_quota() or cores)
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, round(cores - busy)))


def _cpu_quota() -> int | None:
    """CPUs allowed by the cgroup's CPU quota (`docker run --cpus`), or None without one."""
    for path, parse in (
        ("/sys/fs/cgroup/cpu.max", lambda t: t.split()),
        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", lambda t: [t.strip(), _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")]),
    ):
        try:
            quota, period = parse(Path(path).read_text())
            if quota not in ("max", "-1") and period:
                return max(1, int(int(quota) / int(period)))
        except (OSError, ValueError):
            continue
    return None


def _read(path: str) -> str:
    return Path(path).read_text().strip()


def _setup(threads: int | None, seed: int | None = None) -> int:
    """Sets the CPU threads of torch and of the BLAS/OpenMP pools (`threads`; None: `free_cores()`; 0: the
    libraries' defaults) and seeds torch; returns the torch thread count in effect."""
    import torch

    n = free_cores() if threads is None else threads
    if n > 0:
        torch.set_num_threads(n)
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # scikit-learn's dependency; without it numpy keeps its own default
            pass
        else:
            threadpool_limits(n)
    if seed is not None:
        torch.manual_seed(seed)
    return torch.get_num_threads()


def _load(
    data: Path,
    schema: Path | None,
    targets: list[str] | None,
    ignore_extra: bool = False,
    drop: list[str] | None = None,
    non_numeric_as_missing: bool = False,
):
    from hhvaem.training.tabular import load_dataset

    if ignore_extra and schema is None:
        fail("--ignore-extra: needs --schema (the columns to keep)")
    return load_dataset(
        data,
        targets or [],
        schema,
        ignore_extra=ignore_extra,
        drop=drop or (),
        non_numeric_as_missing=non_numeric_as_missing,
    )


def _stage_steps(df, sch, variant: str, steps: int | None) -> dict[str, int]:
    """{stage: steps} that training will run (training/fit.py: planned_steps)."""
    from hhvaem.training.fit import planned_steps

    return planned_steps(variant, len(df), len(sch.features), steps)


def _plan(
    df, sch, variant: str, steps: int | None, threads: int, compile: bool | None, held_out: int = 0, cross: bool = False
) -> str:
    """What is about to be trained, in one line: the table as read (`df`: the training rows; `held_out` more rows
    kept for the quality summary), every stage's steps and their sum, the threads; `cross`: a cross-fit follows."""
    from collections import Counter

    from hhvaem.training.trainer import StageSteps, TrainConfig

    types = Counter(c.type for c in sch.features)
    stages = _stage_steps(df, sch, variant, steps)
    dependency = stages["vi"] + stages.get("hmc", 0)
    compiles = "hmc" in stages and TrainConfig(StageSteps(**stages), compile=compile).compiles
    compile_note = "; stage 3 starts with a one-off compile of the HMC sampler (a minute or more)"
    source = "from --steps" if steps else "the default for this table; --steps N to change"
    names = {"marginal": "marginal-VAE", "vi": "VI", "hmc": "HMC"}
    rows = f"{len(df)} rows" + (f" to train on ({held_out} more held out to measure quality)" if held_out else "")
    return (
        f"{rows}, {len(sch.features)} features ({', '.join(f'{n} {t}' for t, n in types.most_common())}), "
        f"target {', '.join(f'{c.name} ({c.type})' for c in sch.targets)}; {sum(stages.values())} steps = "
        + " + ".join(f"{n} {names[s]}" for s, n in stages.items())
        + f" ({dependency} dependency-VAE steps, {source}), {threads} torch thread{'s' if threads != 1 else ''}"
        + (compile_note if compiles else "")
        + (
            "; then the same recipe again on 80 % of the rows, to calibrate and measure on the rest (cross-fit)"
            if cross
            else ""
        )
    )


def _check_variant(variant: str) -> None:
    from hhvaem.model.hhvaem import VARIANTS

    if variant not in VARIANTS:
        fail(f"--variant: unknown variant {variant!r} (expected one of {', '.join(VARIANTS)})")


@app.command()
def train(
    data: Data,
    out: Annotated[Path, typer.Option("--out", help="Artifact directory to write.")],
    schema: SchemaOpt = None,
    target: TargetOpt = None,
    variant: VariantOpt = "hhvaem",
    steps: StepsOpt = None,
    settings: SetOpt = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    compile: CompileOpt = None,
    ignore_extra: IgnoreExtraOpt = False,
    drop: DropOpt = None,
    non_numeric_as_missing: NonNumericOpt = False,
    hold_out: Annotated[
        bool,
        typer.Option(
            "--hold-out/--no-hold-out",
            help="Keep min(10%, 1000) rows out of training (tables of >= 500 rows) to measure the model's quality "
            "on; --no-hold-out trains on every row and measures on the training rows (optimistic).",
        ),
    ] = True,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate/--no-calibrate",
            help="Measure the conformal correction of the served quantiles on rows the model was not fitted on: "
            "the held-out rows, or (a table under 500 rows, or --no-hold-out) a second model trained on 80% of "
            "the rows and scored on the rest, which about doubles the training time.",
        ),
    ] = True,
) -> None:
    """Fit a model on DATA and write an artifact directory (manifest.json, the ONNX graphs, model.pt); calibrate its
    quantiles (manifest `calibration`); print and store (manifest `metrics.quality`) the model's error on hidden
    entries and on the target."""
    typer.echo(f"reading {data}", err=True)  # before torch loads: a line within the first second
    _check_variant(variant)
    n_threads = _setup(threads, seed)
    with user_errors():
        from hhvaem.training import finish, quality
        from hhvaem.training.artifact import data_fingerprint, write_artifact
        from hhvaem.training.fit import fit

        df, sch = _load(data, schema, target, ignore_extra, drop, non_numeric_as_missing)
        train_df, held = quality.split_rows(df, seed) if hold_out else (df, None)
        n_held = 0 if held is None else len(held)
        cross = calibrate and held is None
        typer.echo(_plan(train_df, sch, variant, steps, n_threads, compile, n_held, cross), err=True)
        overrides = _overrides(settings)
        with StageProgress(stages=_stage_steps(train_df, sch, variant, steps)) as bar:
            fitted = fit(train_df, sch, variant, steps, seed, bar, compile=compile, overrides=overrides)
        typer.echo("exporting the ONNX graphs", err=True)
        manifest = write_artifact(out, fitted.model, fitted.preprocessor, fitted.history, data_fingerprint(df))

        def refit(rows):  # the cross-fit's second model, same recipe
            with StageProgress(stages=_stage_steps(rows, sch, variant, steps)) as bar:
                return fit(rows, sch, variant, steps, seed, bar, compile=compile, overrides=overrides)

        echo = lambda line: typer.echo(line, err=True)  # noqa: E731
        done = finish.finish(out, len(df), train_df, held, fitted, refit, seed, max(n_threads, 1), calibrate, echo)
        manifest, summary = done.manifest, done.quality
    typer.echo(quality.describe(summary, [c.name for c in sch.targets]))
    s = manifest["sampler"]
    typer.echo(
        f"wrote {out} ({variant}, {len(df)} rows, {len(sch.features)} features, targets "
        f"{', '.join(c.name for c in sch.targets)}; inflation {s['inflation']:.3f})"
    )


@app.command()
def export(
    model_dir: Annotated[Path, typer.Argument(help="Artifact directory written by `hhvaem train`.")],
) -> None:
    """(Re-)export the ONNX sampler graph of an artifact from its torch state (upgrades older artifacts)."""
    with user_errors():
        from hhvaem.training.artifact import export_artifact

        manifest = export_artifact(model_dir)
    for g in manifest["graphs"].values():
        typer.echo(f"wrote {model_dir / g['file']} (opset {g['opset']}, exported in {g['export_seconds']} s)")


@app.command()
def evaluate(
    data: Data,
    schema: SchemaOpt = None,
    target: TargetOpt = None,
    variant: VariantOpt = "hhvaem",
    steps: StepsOpt = None,
    settings: SetOpt = None,
    splits: Annotated[str, typer.Option("--splits", help="Comma-separated split indices in 0..9.")] = "0,1,2",
    samples: Annotated[int, typer.Option("--samples", min=2, help="Posterior samples per test row.")] = 1000,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics JSON here.")] = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    compile: CompileOpt = None,
    ignore_extra: IgnoreExtraOpt = False,
    drop: DropOpt = None,
    non_numeric_as_missing: NonNumericOpt = False,
) -> None:
    """Train and test on docs/protocol.md splits; print NLL_xu, NLL_y, RMSE_xu, ACC_xu and the target error."""
    typer.echo(f"reading {data}", err=True)
    _check_variant(variant)
    split_list = _split_list(splits)
    threads = _setup(threads, seed)
    with user_errors():
        from hhvaem.training.evaluate import evaluate_split, summarise

        df, sch = _load(data, schema, target, ignore_extra, drop, non_numeric_as_missing)
        typer.echo(_plan(df, sch, variant, steps, threads, compile) + f"; splits {splits}", err=True)
        results = []
        for k in split_list:
            with StageProgress(prefix=f"split {k}: ") as bar:
                results.append(
                    evaluate_split(
                        df, sch, k, variant, steps, seed, samples, bar, compile, _overrides(settings), max(threads, 1)
                    )
                )
            table_level = {n: v for n, v in results[-1].items() if not n.startswith("col/")}
            typer.echo(f"split {k}: " + ", ".join(f"{n} {v:.4f}" for n, v in sorted(table_level.items())), err=True)
        summary = summarise(variant, split_list, results)
    typer.echo(f"{'metric':<28}{'mean':>10}{'std':>10}   ({variant}, splits {splits})")
    for name, m in summary["metrics"].items():
        if not name.startswith("col/"):
            typer.echo(f"{name:<28}{m['mean']:>10.4f}{m['std']:>10.4f}")
    _echo_columns(summary["metrics"])
    if json_out:
        json_out.write_text(json.dumps(summary, indent=2))


def _echo_columns(metrics: dict) -> None:
    """The per-column diagnosis (training/diagnosis.py) as one line per column, means over splits."""
    columns: dict[str, dict[str, float]] = {}
    for key, m in metrics.items():
        if key.startswith("col/"):
            _, name, figure = key.split("/", 2)
            columns.setdefault(name, {})[figure] = m["mean"]
    if not columns:
        return
    typer.echo("\nper column: hidden entries | observed-entry reconstruction | marginal VAE | share of squared error")
    for name, f in columns.items():
        if "hidden_accuracy" in f or "observed_accuracy" in f:
            cells = [
                f"accuracy {f.get('hidden_accuracy', float('nan')):.3f} "
                f"(majority {f.get('majority_accuracy', float('nan')):.3f})",
                f"accuracy {f.get('observed_accuracy', float('nan')):.3f}",
                "-",
                "-",
            ]
        else:
            cells = [
                f"rmse {f.get('hidden_rmse', float('nan')):.3f}",
                f"rmse {f.get('observed_rmse', float('nan')):.3f}",
                f"rmse {f.get('marginal_rmse', float('nan')):.3f}",
                f"{f.get('share', float('nan')):.3f}",
            ]
        typer.echo(f"  {name:<26}" + " | ".join(cells))


@app.command()
def baselines(
    data: Data,
    schema: SchemaOpt = None,
    target: TargetOpt = None,
    methods: Annotated[
        str,
        typer.Option(
            "--methods",
            help="Comma-separated: mean, knn, mice, missforest, miceforest (LightGBM MICE: needs the optional "
            "miceforest package, the anchors extra), constant, hgb_nan.",
        ),
    ] = "mean,knn,mice,missforest,constant,hgb_nan",
    splits: Annotated[str, typer.Option("--splits", help="Comma-separated split indices in 0..9.")] = "0,1,2",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write {method: metrics} as JSON here.")] = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    ignore_extra: IgnoreExtraOpt = False,
    drop: DropOpt = None,
    non_numeric_as_missing: NonNumericOpt = False,
) -> None:
    """The classical imputers and hgb_nan under the same protocol, splits and metrics as `evaluate`."""
    from hhvaem.training.baselines import METHODS, missing_packages

    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in method_list if m not in METHODS]
    if bad or not method_list:
        fail(
            f"--methods: unknown method {bad[0]!r} (expected some of {', '.join(METHODS)})"
            if bad
            else "--methods: none given"
        )
    for reason in missing_packages(method_list):  # before loading the table: a missing package is known now
        fail(reason)
    split_list = _split_list(splits)
    _setup(threads, seed)
    with user_errors():
        from hhvaem.training.baselines import run_baselines
        from hhvaem.training.evaluate import summarise

        df, sch = _load(data, schema, target, ignore_extra, drop, non_numeric_as_missing)
        results = run_baselines(df, sch, split_list, tuple(method_list), seed, log=lambda m: typer.echo(m, err=True))
        summary = {m: summarise(m, split_list, per_split) for m, per_split in results.items()}
    typer.echo(f"{'method':<12}{'metric':<16}{'mean':>10}{'std':>10}   (splits {splits})")
    for m, sm in summary.items():
        for name, v in sm["metrics"].items():
            typer.echo(f"{m:<12}{name:<16}{v['mean']:>10.4f}{v['std']:>10.4f}")
    if json_out:
        json_out.write_text(json.dumps(summary, indent=2))


# ---- serving ---------------------------------------------------------------------------------------
HostOpt = Annotated[str, typer.Option("--host", help="Interface to listen on.")]
PortOpt = Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")]


def _listen(host: str, port: int):
    """A socket bound to host:port, or exit 2 saying why not. Bound before the service starts (which migrates the
    database and registers the models): a serve that cannot listen must leave the registry as it was."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a port in TIME_WAIT is free
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            fail(f"--port {port}: {host}:{port} is already in use (another server?); choose another --port")
        fail(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); nothing was started")
    sock.set_inheritable(True)
    return sock


def _serve(host: str, port: int, settings, sock=None) -> None:
    """Runs the service with `settings` on `sock` (default: host:port, bound now, before anything else)."""
    import logging

    import uvicorn

    from hhvaem.app.core.http import server_options
    from hhvaem.app.main import create_app

    sock = sock or _listen(host, port)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(
        create_app(settings), host=host, port=port, log_level=settings.log_level.lower(), **server_options(settings)
    )
    uvicorn.Server(config).run(sockets=[sock])


@app.command()
def serve(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    models: Annotated[
        Path | None, typer.Option("--models", help="Directory with one artifact per subfolder, registered at start.")
    ] = None,
) -> None:
    """Run the HTTP service (settings from HHVAEM_* environment variables; see the README)."""
    if models is not None and not models.is_dir():
        fail(f"--models: {models} is not a directory")
    with user_errors():  # a bad HHVAEM_* variable: one line
        from hhvaem.app.core.config import Settings

        settings = Settings(**({"models_dir": models} if models else {}))
    _serve(host, port, settings)


@app.command()
def demo(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            min=10,
            help="Training steps for the demo model (default: the demo recipe, about a minute).",
            show_default=False,
        ),
    ] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Train the demo model again.")] = False,
    threads: ThreadsOpt = None,
    models: Annotated[
        Path | None,
        typer.Option(
            "--models", help="The demo's own data folder: its model and its registry (default: <data dir>/demo)."
        ),
    ] = None,
    train_only: Annotated[
        bool, typer.Option("--train-only", help="Train the demo model unless it is there, then exit (no server).")
    ] = False,
) -> None:
    """Serve the demo model (scikit-learn's diabetes table in raw units), training it on first run."""
    from hhvaem.app.core.config import Settings

    settings = Settings().for_demo(models)  # the demo's own data folder and registry, never the user's
    models_dir = settings.models_dir
    target = models_dir / "diabetes"
    sock = None if train_only else _listen(host, port)  # before a minute of training, not after
    reason = _demo_needs_training(target, rebuild)
    if reason:
        _train_demo(target, reason, steps, threads)
    else:
        typer.echo(f"the demo model is in {target} (--rebuild trains it again)", err=True)
    if train_only:
        return
    typer.echo(f"serving the demo model on http://{host}:{port}/ (questionnaire page), API docs at /docs", err=True)
    if shutil.which("hhvaem") is None:
        here = Path(sys.argv[0]).resolve()
        typer.echo(
            f"the hhvaem command is {here} (not on PATH: `source {here.parent}/activate` puts it there)", err=True
        )
    _serve(host, port, settings, sock)


def _demo_needs_training(target: Path, rebuild: bool) -> str | None:
    """Why the demo model must be trained (first run, --rebuild, unreadable by this version), or None."""
    from hhvaem.model.io.artifact import ArtifactError, read_manifest

    if rebuild:
        return "--rebuild"
    if not (target / "manifest.json").is_file():
        return "first run only"
    try:
        manifest = read_manifest(target, require_graphs=True)
    except ArtifactError as e:
        return f"the one there cannot be used: {e}"
    from hhvaem.model.schema import Schema
    from hhvaem.training.demo import demo_table

    if Schema.from_dict(manifest["schema"]) != demo_table()[1]:
        return "the demo's columns changed since it was trained (names, units, labels or descriptions)"
    return None


def _train_demo(target: Path, reason: str, steps: int | None, threads: int | None) -> None:
    """Trains the demo model next to `target` and moves it into place, so that `target` is never half written."""
    import tempfile

    try:
        from hhvaem.training.demo import build_demo
    except ImportError:
        fail("training the demo model needs torch: pip install torch==2.13.0 && pip install -e '.[train]'")
    n = _setup(threads, 0)
    typer.echo(
        f"training the demo model into {target} ({reason}; about a minute, {n} torch thread{'s' if n != 1 else ''})",
        err=True,
    )
    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".training-", dir=target.parent))
    try:
        with StageProgress() as bar:
            build_demo(work, steps=steps, progress=bar)
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    typer.echo(f"demo model trained and exported in {time.monotonic() - started:.0f} s", err=True)


@app.command()
def score(
    model_dir: Annotated[Path, typer.Argument(help="Artifact directory (manifest.json + sampler.onnx).")],
    input: Annotated[Path, typer.Argument(help="Table to score: .csv, .csv.gz or .parquet.")],
    output: Annotated[Path, typer.Argument(help="Where to write the result: .csv or .parquet.")],
    operation: Annotated[str, typer.Option("--operation", help="impute | predict | both")] = "both",
    samples: Annotated[int | None, typer.Option("--samples", min=2, help="Posterior samples per row.")] = None,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", min=1, help="Rows per sampler call.")] = CHUNK_ROWS,
    seed: SeedOpt = 0,
    threads: Annotated[int, typer.Option("--threads", help="ONNX Runtime threads (0: default).")] = 0,
    raw_quantiles: Annotated[
        bool,
        typer.Option("--raw-quantiles", help="The model's raw quantiles, not its conformal correction (if any)."),
    ] = False,
    plausibility: Annotated[
        bool,
        typer.Option(
            "--plausibility",
            help="Also check each observed value against the row's others: <column>__plausibility (p) and unusual "
            "(the values below 0.01). Costs one more sampler row per observed value.",
        ),
    ] = False,
    imputations: Annotated[
        int | None,
        typer.Option(
            "--imputations",
            min=1,
            help="Multiple imputation: write M completed tables (posterior draws), one under the other, with "
            "`imputation` and `row` columns (at most --samples).",
        ),
    ] = None,
    engine_name: Annotated[
        str,
        typer.Option(
            "--engine",
            help="local: this process | ray: a Ray cluster (INPUT may then be a directory or glob of Parquet files; "
            "OUTPUT a directory of Parquet partitions, or a .csv; a rerun with the same OUTPUT resumes).",
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="--engine ray: the cluster (auto, ray://HOST:10001, HOST:6379; default: RAY_ADDRESS, else a "
            "local one on this machine).",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=1, help="--engine ray: scoring actors (default: the cluster's CPUs).", show_default=False
        ),
    ] = None,
    partition_rows: Annotated[
        int,
        typer.Option("--partition-rows", min=1, help="--engine ray: rows per partition (a multiple of --chunk-rows)."),
    ] = 4096,
) -> None:
    """Batch scoring offline, with a progress bar; bad rows are reported by row number and skipped."""
    from hhvaem.app.engine.scoring import OPERATIONS

    if operation not in OPERATIONS:
        fail(f"--operation: unknown operation {operation!r} (expected one of {', '.join(OPERATIONS)})")
    if imputations is not None and operation == "predict":
        fail("--imputations: multiple imputation needs --operation impute or both")
    if plausibility and imputations is not None and operation != "both":
        fail("--plausibility: with --imputations it needs --operation both (the prediction carries the checks)")
    if imputations is not None and samples is not None and imputations > samples:
        fail(f"--imputations: {imputations} is more than --samples {samples}")
    if engine_name not in ("local", "ray"):
        fail(f"--engine: unknown engine {engine_name!r} (expected local or ray)")
    if engine_name == "ray":
        if partition_rows % chunk_rows:
            fail(f"--partition-rows: {partition_rows} is not a multiple of --chunk-rows {chunk_rows}")
        options = {"samples": samples, "chunk_rows": chunk_rows, "seed": seed, "imputations": imputations}
        options["plausibility"] = plausibility
        options["calibrated"] = not raw_quantiles
        cluster = {"address": address, "workers": workers, "partition_rows": partition_rows}
        _score_on_ray(model_dir, input, output, operation, options, cluster)
        return
    if not output.name.lower().endswith((".csv", ".parquet")):
        fail(f"{output.name}: the output must end in .csv or .parquet")
    with user_errors():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from hhvaem.app.engine import Engine
        from hhvaem.app.engine.scoring import passthrough, score_frame
        from hhvaem.model.io.tables import read_table_with_notes

        engine = Engine(model_dir, threads=threads)
        df, notes = read_table_with_notes(input, verbatim=passthrough(engine))
        for note in notes:
            typer.echo(f"warning: {note}", err=True)
        columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=_stderr_console(), disable=not sys.stderr.isatty()) as bar:
            task = bar.add_task("rows", total=len(df))
            lines = ScoreLines("scoring") if bar.disable else None

            def report(done: int, total: int, _) -> None:
                bar.update(task, completed=done)
                if lines:
                    lines(done, total)

            out, errors = score_frame(
                engine, df, operation, samples, chunk_rows, seed, report, imputations, plausibility, not raw_quantiles
            )
        output.parent.mkdir(parents=True, exist_ok=True)
        if output.name.lower().endswith(".parquet"):
            # Parquet columns have one type: a column mixing text and numbers (a rejected "abc" among
            # imputed values) is written as text.
            for name in out.columns:
                if out[name].dtype == object and out[name].map(type).nunique() > 1:
                    out[name] = out[name].map(lambda v: v if v is None else str(v))
            out.to_parquet(output, index=False)
        else:
            out.to_csv(output, index=False)
    for e in errors[:20]:
        where = f"row {e['row']}, " if e["row"] is not None else ""
        typer.echo(f"warning: {where}column {e['column']}: {e['reason']}", err=True)
    if len(errors) > 20:
        typer.echo(f"warning: ... and {len(errors) - 20} more", err=True)
    bad = len({e["row"] for e in errors if e["row"] is not None})
    what = f"{operation}, {imputations} imputations" if imputations else operation
    typer.echo(f"wrote {output}: {len(df) - bad} rows scored, {bad} rejected ({what}, {engine.backend_name})")


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


class ScoreLines:
    """`hhvaem score`'s progress where stderr is not a terminal (a log file, a pipe): a line after the first chunk,
    then one every `every_seconds`, and one at the end: rows done of all, rows per second, time left."""

    def __init__(self, what: str, every_seconds: float = 10.0, clock=time.monotonic):
        self.what, self.every_seconds, self.clock = what, every_seconds, clock
        self.started = self.last_line = clock()
        self.lines = 0

    def __call__(self, done: int, total: int | None) -> None:
        from hhvaem.training.progress import duration

        now = self.clock()
        if self.lines and done != total and now - self.last_line < self.every_seconds:
            return
        self.last_line, self.lines = now, self.lines + 1
        seconds = now - self.started
        rate = done / seconds if seconds > 0 else 0.0
        text = f"{self.what}: {done}/{total if total is not None else '?'} rows, {rate:.0f} rows/s"
        if total is not None and done < total and rate > 0:
            text += f", ETA {duration((total - done) / rate)}"
        elif done == total:
            text += f", done in {duration(seconds)}"
        typer.echo(text, err=True)


def _score_on_ray(model_dir: Path, input: Path, output: Path, operation: str, options: dict, cluster: dict) -> None:
    """`hhvaem score --engine ray`: Parquet partitions in OUTPUT (or OUTPUT.parts, assembled into OUTPUT if it is a
    .csv); exit status 1 naming the partitions that failed (a rerun retries only those)."""
    with user_errors():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from hhvaem.app.engine.distributed import score_on_ray
        from hhvaem.app.engine.partitions import read_results

        as_csv = output.name.lower().endswith(".csv")
        parts = output.with_name(output.name + ".parts") if as_csv else output
        columns = (TextColumn("scoring on ray"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=_stderr_console(), disable=not sys.stderr.isatty()) as bar:
            task = bar.add_task("rows", total=None)
            lines = ScoreLines("scoring on ray") if bar.disable else None

            def report(done: int, total: int | None, _) -> None:
                bar.update(task, completed=done, total=total)
                if lines:
                    lines(done, total)

            report = score_on_ray(
                model_dir,
                input,
                parts,
                operation,
                **options,
                address=cluster["address"],
                workers=cluster["workers"],
                partition_rows=cluster["partition_rows"],
                progress=report,
            )
    for e in report.notes + report.errors[:20]:
        where = f"row {e['row']}, " if e["row"] is not None else ""
        typer.echo(f"warning: {where}column {e['column']}: {e['reason']}", err=True)
    if report.failed:
        names = "; ".join(p.describe() for p in report.failed[:10]) + (" ..." if len(report.failed) > 10 else "")
        typer.echo(f"error: {len(report.failed)} of {report.partitions} partitions failed: {names}", err=True)
        typer.echo(f"the others are in {parts}; run the same command again to score only the failed ones", err=True)
        raise typer.Exit(1)
    if as_csv:
        read_results(parts).to_csv(output, index=False)  # `row` first: the input's row numbers
        shutil.rmtree(parts)
    done = f"{len(report.written)} partitions scored, {len(report.skipped)} already there"
    typer.echo(
        f"wrote {output}: {report.total_rows - report.failed_rows} rows scored, {report.failed_rows} rejected "
        f"({operation}; {done}; {report.workers} workers, {report.seconds:.1f} s)"
    )


keys_app = typer.Typer(no_args_is_help=True, help="API keys (stored hashed; the key is shown once, at creation).")
app.add_typer(keys_app, name="keys")


def _db():
    from hhvaem.app.core.config import Settings
    from hhvaem.app.db.database import Database, migrate

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.database_url)
    return Database(settings.database_url)


DemoOpt = Annotated[bool, typer.Option("--demo", help="The demo's data folder (<data dir>/demo) instead.")]


def _folder_settings(demo: bool):
    from hhvaem.app.core.config import Settings

    with user_errors():
        settings = Settings()
    return settings.for_demo() if demo else settings


@app.command()
def info(
    model: Annotated[
        Path | None, typer.Argument(help="An artifact directory: show its model card instead.", show_default=False)
    ] = None,
    demo: DemoOpt = False,
) -> None:
    """Show the data folder, the database (no password) and the registry (models and versions) in use; with MODEL,
    that artifact's model card (data, training, held-out quality beside KNN and gradient boosting, interval
    coverage, per feature). Reads only: creates nothing."""
    from hhvaem.app.core.config import redact_url

    if model is not None:
        with user_errors():
            from hhvaem.model.io.artifact import read_manifest
            from hhvaem.training.quality import card

            typer.echo(card(read_manifest(model)))
        return

    settings = _folder_settings(demo)
    typer.echo(f"data folder: {settings.data_dir}{'' if settings.data_dir.is_dir() else ' (not created yet)'}")
    typer.echo(f"database:    {redact_url(settings.database_url)}")
    typer.echo(f"models:      {settings.models_dir or '(none registered at start: HHVAEM_MODELS_DIR or --models)'}")
    batch = settings.data_dir / "batch"
    jobs = sum(1 for p in batch.iterdir() if p.is_dir()) if batch.is_dir() else 0
    typer.echo(f"batch files: {jobs} job folder{'s' if jobs != 1 else ''} in {batch}")
    if settings.sqlite_path is not None and not settings.sqlite_path.exists():
        typer.echo("registry:    empty (no database yet: `hhvaem serve` creates it)")
        return
    from hhvaem.app.db import repository as repo
    from hhvaem.app.db.database import Database

    database = Database(settings.database_url, timeout=settings.database_timeout_seconds)
    try:
        with database.read() as tx:
            rows = repo.list_models(tx)
    except Exception as e:  # noqa: BLE001 - unreachable, not migrated, not ours: say why in one line
        fail(f"registry: cannot read the database ({' '.join(str(e).split())[:300]})")
    finally:
        database.dispose()
    typer.echo(f"registry:    {len(rows)} version{'s' if len(rows) != 1 else ''}")
    for r in rows:
        state = "active" if r.active else (f"retired {r.retired_at:%Y-%m-%d}" if r.retired_at else "inactive")
        typer.echo(f"  {r.name} v{r.version}  {state:<18} {r.path}")


@app.command()
def reset(
    demo: DemoOpt = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete the data folder's SQLite database (registry, API keys, audit, batch jobs) and its batch job files.
    Model artifacts are never deleted (only their registration). Refuses a database that is not a SQLite file:
    drop that one with its own tools. Stop the service on this folder first."""
    from hhvaem.app.core.config import redact_url

    settings = _folder_settings(demo)
    if settings.sqlite_path is None:
        fail(
            f"reset: the database is {redact_url(settings.database_url)}, not a SQLite file of a data folder; "
            "nothing was deleted (a shared database is dropped with its own tools)"
        )
    db = settings.sqlite_path
    doomed = [p for p in (db, *(db.with_name(db.name + x) for x in ("-wal", "-shm", "-journal"))) if p.exists()]
    batch = settings.data_dir / "batch"
    doomed += [batch] if batch.is_dir() else []
    if not doomed:
        typer.echo(f"nothing to reset in {settings.data_dir}")
        return
    typer.echo("to delete:\n" + "\n".join(f"  {p}" for p in doomed))
    if not yes and not typer.confirm("delete these?", default=False):
        fail("reset: not confirmed; nothing was deleted (--yes skips the question)")
    for p in doomed:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    typer.echo(f"reset {settings.data_dir}: the next start begins with an empty registry")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A label for the key (who uses it).")],
    scope: Annotated[list[str] | None, typer.Option("--scope", help="infer | admin (repeat; default infer).")] = None,
) -> None:
    """Create an API key and print it (only now: only its hash is stored)."""
    from hhvaem.app.db import repository as repo

    with user_errors():
        with _db().transaction() as tx:
            record, key = repo.create_api_key(tx, name, scope or ["infer"])
            typer.echo(f"key {record.id} ({', '.join(record.scopes)}): {key}")


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (prefix, scopes, revoked or not); never the keys themselves."""
    from hhvaem.app.db import repository as repo

    with _db().read() as tx:
        for k in repo.list_api_keys(tx):
            state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
            typer.echo(f"{k.id:>4}  {k.name:<24} {k.prefix}…  {','.join(k.scopes):<14} {state}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(help="Key id from `hhvaem keys list`.")]) -> None:
    """Revoke an API key (requests with it get 401 from then on)."""
    from hhvaem.app.db import repository as repo

    with user_errors():
        try:
            with _db().transaction() as tx:
                repo.revoke_api_key(tx, key_id)
        except LookupError:
            fail(f"no API key with id {key_id}")
    typer.echo(f"revoked key {key_id}")


def _split_list(splits: str) -> list[int]:
    try:
        split_list = [int(s) for s in splits.split(",") if s.strip()]
    except ValueError:
        fail(f"--splits: {splits!r} is not a comma-separated list of integers")
    if not split_list or any(not 0 <= s < 10 for s in split_list):
        fail(f"--splits: {splits!r} must name splits between 0 and 9")
    return split_list


@app.command()
def saia(
    data: Data,
    schema: SchemaOpt = None,
    target: TargetOpt = None,
    methods: Annotated[
        str,
        typer.Option("--methods", help="Comma-separated: random, kl, kl-latent, histogram, mixture."),
    ] = "random,kl,histogram,mixture",
    splits: Annotated[str, typer.Option("--splits", help="Comma-separated split indices in 0..9.")] = "0,1,2",
    steps: Annotated[
        int | None, typer.Option("--steps", min=10, help="Training steps per split (default: `train`'s budget).")
    ] = None,
    samples: Annotated[int, typer.Option("--samples", min=2, help="Posterior samples K per sampler call.")] = 100,
    max_rows: Annotated[
        int | None, typer.Option("--max-rows", min=1, help="Seeded subset of test rows per split (default: all).")
    ] = None,
    kl_draws: Annotated[int, typer.Option("--kl-draws", min=1, help="Draws per candidate for the KL reward.")] = 32,
    seed: SeedOpt = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write curves and AUCs as JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG of both curves here.")] = None,
    threads: ThreadsOpt = None,
    compile: CompileOpt = None,
    ignore_extra: IgnoreExtraOpt = False,
    drop: DropOpt = None,
    non_numeric_as_missing: NonNumericOpt = False,
) -> None:
    """Sequential active information acquisition (docs/protocol.md): train per split, acquire features one by one.

    Prints the area under the target-error and NLL_y curves (mean ± std over splits) per method. The target is
    the first --target (or the schema's first target).
    """
    from hhvaem.training.saia import METHODS

    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in method_list if m not in METHODS]
    if bad:
        fail(f"--methods: unknown method {bad[0]!r} (expected some of {', '.join(METHODS)})")
    if not method_list or len(set(method_list)) != len(method_list):
        fail(f"--methods: {methods!r} must name each method at most once, and at least one")
    if kl_draws > samples:
        fail(f"--kl-draws: {kl_draws} is more than --samples {samples}")
    if plot is not None and plot.suffix.lower() != ".png":
        fail(f"--plot: {str(plot)!r} must end in .png")
    split_list = _split_list(splits)
    threads = _setup(threads, seed)  # torch's and ONNX Runtime's
    with user_errors():
        from hhvaem.training.saia import SaiaSettings, format_table, plot_curves, run_saia, write_json

        df, sch = _load(data, schema, target, ignore_extra, drop, non_numeric_as_missing)
        settings = SaiaSettings(tuple(method_list), samples, kl_draws, 5, max_rows, seed, max(threads, 1))
        summary = run_saia(
            df,
            sch,
            split_list,
            target[0] if target else None,
            steps,
            settings,
            progress_for=lambda k: StageProgress(prefix=f"split {k}: "),
            compile=compile,
            log=lambda msg: typer.echo(msg, err=True),
        )
    typer.echo(format_table(summary))
    if json_out:
        write_json(summary, json_out)
    if plot:
        plot_curves(summary, plot, title=f"SAIA on {data.name}, target {summary['target']}")


def _table_warnings_in_one_line() -> None:
    """A table read with a note (e.g. an empty trailing column dropped) says so in one line, like every message."""
    import warnings

    plain = warnings.formatwarning

    def one_line(message, category, *args, **kwargs):  # noqa: ANN001 - warnings' signature
        if category.__name__ == "TableWarning":
            return f"warning: {message}\n"
        return plain(message, category, *args, **kwargs)

    warnings.formatwarning = one_line


def main() -> None:
    _table_warnings_in_one_line()
    app()


if __name__ == "__main__":
    main()
