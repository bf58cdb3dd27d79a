"""The `hhvaem` command line. Every command has --help; bad input exits 2 with a one-line reason."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="HH-VAEM for tables with missing values.")

Data = Annotated[Path, typer.Argument(help="Training table: .csv or .parquet, header row, empty/NA cells missing.")]
SchemaOpt = Annotated[
    Path | None, typer.Option("--schema", help="JSON schema (features/targets with types) overriding inference.")
]
TargetOpt = Annotated[
    list[str] | None, typer.Option("--target", help="Target column (repeat for several).", show_default=False)
]
VariantOpt = Annotated[str, typer.Option("--variant", help="hhvaem | vaem | hvaem | hmcvaem | miwaem")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed: the same seed reproduces the model.")]
ThreadsOpt = Annotated[int, typer.Option("--threads", help="Torch CPU threads (0: torch's default).")]
CompileOpt = Annotated[
    bool | None,
    typer.Option(
        "--compile/--no-compile",
        help="torch.compile the HMC sampler for training (default: when there are >= 500 HMC steps).",
        show_default=False,
    ),
]


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
    """One rich progress bar per training stage, showing the current loss."""

    NAMES = {"marginal": "stage 1 marginal VAEs", "vi": "stage 2 dependency VAE", "hmc": "stage 3 VAE + HMC"}

    def __init__(self, prefix: str = ""):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.prefix = prefix
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}"),
            TimeElapsedColumn(),
            disable=not sys.stderr.isatty(),
        )
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, step: int, total: int, loss: float) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(f"{self.prefix}{self.NAMES[stage]}", total=total, loss=loss)
        self.progress.update(self.tasks[stage], completed=step, loss=loss)
        if step == total and not self.progress.disable:
            return
        if step == total:
            typer.echo(f"{self.prefix}{self.NAMES[stage]}: {total} steps, loss {loss:.3f}", err=True)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)


def _setup(threads: int, seed: int | None = None) -> None:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    if seed is not None:
        torch.manual_seed(seed)


def _load(data: Path, schema: Path | None, targets: list[str] | None):
    from hhvaem.training.tabular import load_dataset

    return load_dataset(data, targets or [], schema)


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
    steps: Annotated[int, typer.Option("--steps", min=10, help="Dependency-VAE steps (last 10% with HMC).")] = 20000,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = 0,
    compile: CompileOpt = None,
) -> None:
    """Fit a model on DATA and write an artifact directory (manifest.json, the ONNX graphs, model.pt)."""
    _check_variant(variant)
    _setup(threads, seed)
    with user_errors():
        from hhvaem.training.artifact import data_fingerprint, write_artifact
        from hhvaem.training.fit import fit

        df, sch = _load(data, schema, target)
        with StageProgress() as bar:
            fitted = fit(df, sch, variant, steps, seed, bar, compile=compile)
        manifest = write_artifact(out, fitted.model, fitted.preprocessor, fitted.history, data_fingerprint(df))
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
    steps: Annotated[int, typer.Option("--steps", min=10, help="Training steps per split.")] = 20000,
    splits: Annotated[str, typer.Option("--splits", help="Comma-separated split indices in 0..9.")] = "0,1,2",
    samples: Annotated[int, typer.Option("--samples", min=2, help="Posterior samples per test row.")] = 1000,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics JSON here.")] = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = 0,
    compile: CompileOpt = None,
) -> None:
    """Train and test on docs/protocol.md splits; print NLL_xu, NLL_y, RMSE_xu, ACC_xu and the target error."""
    _check_variant(variant)
    split_list = _split_list(splits)
    _setup(threads, seed)
    with user_errors():
        from hhvaem.training.evaluate import evaluate_split, summarise

        df, sch = _load(data, schema, target)
        results = []
        for k in split_list:
            with StageProgress(prefix=f"split {k}: ") as bar:
                results.append(evaluate_split(df, sch, k, variant, steps, seed, samples, bar, compile))
            typer.echo(f"split {k}: " + ", ".join(f"{n} {v:.4f}" for n, v in sorted(results[-1].items())), err=True)
        summary = summarise(variant, split_list, results)
    typer.echo(f"{'metric':<16}{'mean':>10}{'std':>10}   ({variant}, splits {splits})")
    for name, m in summary["metrics"].items():
        typer.echo(f"{name:<16}{m['mean']:>10.4f}{m['std']:>10.4f}")
    if json_out:
        json_out.write_text(json.dumps(summary, indent=2))


# ---- serving ---------------------------------------------------------------------------------------
HostOpt = Annotated[str, typer.Option("--host", help="Interface to listen on.")]
PortOpt = Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")]


def _serve(host: str, port: int, models_dir: Path | None) -> None:
    import logging

    import uvicorn

    from hhvaem.app.core.config import Settings
    from hhvaem.app.main import create_app

    settings = Settings(**({"models_dir": models_dir} if models_dir else {}))
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=host, port=port, log_level=settings.log_level.lower())


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
    _serve(host, port, models)


@app.command()
def demo(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    steps: Annotated[int, typer.Option("--steps", min=10, help="Training steps for the demo model.")] = 2000,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Train the demo model again.")] = False,
) -> None:
    """Serve the demo model (scikit-learn's diabetes table in raw units), training it on first run."""
    from hhvaem.app.core.config import Settings

    models_dir = Settings().data_dir / "demo"
    target = models_dir / "diabetes"
    if rebuild or not (target / "manifest.json").is_file():
        try:
            from hhvaem.training.demo import build_demo
        except ImportError:
            fail("training the demo model needs torch: pip install torch==2.13.0 && pip install -e '.[train]'")
        typer.echo(f"training the demo model into {target} (first run only, a few minutes)...", err=True)
        _setup(0, 0)
        with StageProgress() as bar:
            build_demo(target, steps=steps, progress=bar)
    typer.echo(f"serving the demo model on http://{host}:{port}/ (questionnaire page), API docs at /docs", err=True)
    _serve(host, port, models_dir)


@app.command()
def score(
    model_dir: Annotated[Path, typer.Argument(help="Artifact directory (manifest.json + sampler.onnx).")],
    input: Annotated[Path, typer.Argument(help="Table to score: .csv, .csv.gz or .parquet.")],
    output: Annotated[Path, typer.Argument(help="Where to write the result: .csv or .parquet.")],
    operation: Annotated[str, typer.Option("--operation", help="impute | predict | both")] = "both",
    samples: Annotated[int | None, typer.Option("--samples", min=2, help="Posterior samples per row.")] = None,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", min=1, help="Rows per sampler call.")] = 128,
    seed: SeedOpt = 0,
    threads: Annotated[int, typer.Option("--threads", help="ONNX Runtime threads (0: default).")] = 0,
) -> None:
    """Batch scoring offline, with a progress bar; bad rows are reported by row number and skipped."""
    from hhvaem.app.engine.scoring import OPERATIONS

    if operation not in OPERATIONS:
        fail(f"--operation: unknown operation {operation!r} (expected one of {', '.join(OPERATIONS)})")
    if not output.name.lower().endswith((".csv", ".parquet")):
        fail(f"{output.name}: the output must end in .csv or .parquet")
    with user_errors():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from hhvaem.app.engine import Engine
        from hhvaem.app.engine.scoring import score_frame
        from hhvaem.model.io.tables import read_table

        engine = Engine(model_dir, threads=threads)
        df = read_table(input)
        columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, disable=not sys.stderr.isatty()) as bar:
            task = bar.add_task("rows", total=len(df))
            out, errors = score_frame(
                engine,
                df,
                operation,
                samples,
                chunk_rows,
                seed,
                progress=lambda done, total, _: bar.update(task, completed=done),
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
    typer.echo(f"wrote {output}: {len(df) - bad} rows scored, {bad} rejected ({operation}, {engine.backend_name})")


keys_app = typer.Typer(no_args_is_help=True, help="API keys (stored hashed; the key is shown once, at creation).")
app.add_typer(keys_app, name="keys")


def _db():
    from hhvaem.app.core.config import Settings
    from hhvaem.app.db.database import Database, migrate

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.database_url)
    return Database(settings.database_url)


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
    steps: Annotated[int, typer.Option("--steps", min=10, help="Training steps per split.")] = 3000,
    samples: Annotated[int, typer.Option("--samples", min=2, help="Posterior samples K per sampler call.")] = 100,
    max_rows: Annotated[
        int | None, typer.Option("--max-rows", min=1, help="Seeded subset of test rows per split (default: all).")
    ] = None,
    kl_draws: Annotated[int, typer.Option("--kl-draws", min=1, help="Draws per candidate for the KL reward.")] = 32,
    seed: SeedOpt = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write curves and AUCs as JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG of both curves here.")] = None,
    threads: Annotated[int, typer.Option("--threads", help="Torch and ONNX Runtime CPU threads.")] = 1,
    compile: CompileOpt = None,
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
    _setup(threads, seed)
    with user_errors():
        from hhvaem.training.saia import SaiaSettings, format_table, plot_curves, run_saia, write_json

        df, sch = _load(data, schema, target)
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
