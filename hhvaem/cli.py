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
    from model.preprocessing import EncodingError
    from model.schema import SchemaError
    from training.artifact import ArtifactError
    from training.tabular import TableError

    try:
        yield
    except (TableError, SchemaError, EncodingError, ArtifactError, ValueError) as e:
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
    from training.tabular import load_dataset

    return load_dataset(data, targets or [], schema)


def _check_variant(variant: str) -> None:
    from model.hhvaem import VARIANTS

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
    """Fit a model on DATA and write an artifact directory (manifest.json, sampler.onnx, model.pt)."""
    _check_variant(variant)
    _setup(threads, seed)
    with user_errors():
        from training.artifact import data_fingerprint, write_artifact
        from training.fit import fit

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
        from training.artifact import export_artifact

        manifest = export_artifact(model_dir)
    g = manifest["onnx"]
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
    """Train and test on PROTOCOL.md splits; print NLL_xu, NLL_y, RMSE_xu, ACC_xu and the target error."""
    _check_variant(variant)
    try:
        split_list = [int(s) for s in splits.split(",") if s.strip()]
    except ValueError:
        fail(f"--splits: {splits!r} is not a comma-separated list of integers")
    if not split_list or any(not 0 <= s < 10 for s in split_list):
        fail(f"--splits: {splits!r} must name splits between 0 and 9")
    _setup(threads, seed)
    with user_errors():
        from training.evaluate import evaluate_split, summarise

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
