"""Training that says how long and how good (issue 23): step rates and time left in progress lines, stage 3's
compile announced, a plan line whose numbers add up, the quality summary in the sealed manifest, and `hhvaem
score`'s progress in a log."""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from hhvaem.cli import ScoreLines, _plan, app
from hhvaem.model.io.artifact import read_manifest
from hhvaem.training import quality
from hhvaem.training.progress import LineProgress, duration
from hhvaem.training.tabular import load_dataset
from hhvaem.training.trainer import StageSteps, TrainConfig, Trainer
from tests.training.test_trainer import tiny_model_and_data

runner = CliRunner()


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_duration_reads_like_a_person_would_say_it():
    assert [duration(s) for s in (0.4, 8, 59.6, 125, 3600 + 4 * 60 + 20)] == [
        "0 s",
        "8 s",
        "1 min 00 s",
        "2 min 05 s",
        "1 h 04 min",
    ]


def test_progress_lines_carry_the_measured_rate_and_the_time_left():
    clock, out = FakeClock(), io.StringIO()
    lines = LineProgress(out, every_seconds=10, stages={"marginal": 10, "vi": 1000, "hmc": 100}, clock=clock)
    clock.now += 2.0  # the first step carries one-off costs: the rate is measured from its end
    lines("vi", 1, 1000, 3.0)
    clock.now += 10.0
    lines("vi", 201, 1000, 2.5)  # 200 steps in 10 s: 20 steps/s, 799 steps left: 40 s
    clock.now += 1.0
    lines("vi", 221, 1000, 2.4)  # within 10 s of the last line: no line
    clock.now += 38.95
    lines("vi", 1000, 1000, 2.0)
    first, middle, last = out.getvalue().splitlines()
    assert first == (
        "stage 2 dependency VAE: step 1/1000, loss 3.000, 2 s, measuring the step rate, "
        "ETA once the next steps are timed, then stage 3 VAE + HMC (100 steps)"
    )
    assert middle == (
        "stage 2 dependency VAE: step 201/1000, loss 2.500, 12 s, 20 steps/s, ETA 40 s for this stage, "
        "then stage 3 VAE + HMC (100 steps)"
    )
    assert last == "stage 2 dependency VAE: 1000 steps, loss 2.000, 52 s, 20 steps/s"


def _tiny_trainer(compile: bool) -> Trainer:
    model, data = tiny_model_and_data()
    model.compile_sampler = lambda enabled=True: None  # the events, not torch.compile's minutes
    return Trainer(model, data, TrainConfig(StageSteps(3, 4, 3), batch_size=16, compile=compile))


@pytest.mark.parametrize("compile", [True, False])
def test_the_compile_is_announced_before_stage_3_and_timed_after(compile):
    out = io.StringIO()
    history = _tiny_trainer(compile).run(LineProgress(out, stages={"marginal": 3, "vi": 4, "hmc": 3}))
    text = out.getvalue().splitlines()
    notice = [i for i, line in enumerate(text) if "compiling the HMC sampler" in line]
    if not compile:
        assert not notice and "compile_seconds" not in history
        return
    (before,) = notice
    assert text[before - 1].startswith("stage 2 dependency VAE: 4 steps")  # after stage 2, before stage 3's step
    assert "expected about 80-200 s on a free core" in text[before]
    assert re.fullmatch(r"stage 3 VAE \+ HMC: compiled in \d+ s \(with the first step\); training on", text[before + 1])
    assert text[before + 2].startswith("stage 3 VAE + HMC: step 1/3")
    assert history["compile_seconds"] > 0


def _frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    df = pd.DataFrame(
        {"a": a, "b": a + 0.3 * rng.normal(size=n), "c": np.where(a > 0, "hi", "lo"), "y": 2 * a + rng.normal(size=n)}
    )
    df.loc[rng.random(n) < 0.1, "b"] = np.nan
    return df


@pytest.mark.parametrize(
    ("variant", "steps"), [("hhvaem", None), ("hhvaem", 13509), ("hhvaem", 40), ("vaem", 40), ("miwaem", 3000)]
)
def test_the_plan_line_adds_up(tmp_path, variant, steps):
    path = tmp_path / "t.csv"
    _frame(120).to_csv(path, index=False)
    df, sch = load_dataset(path, ["y"])
    line = _plan(df, sch, variant, steps, 1, None)
    m = re.search(
        r"; (\d+) steps = (\d+) marginal-VAE \+ (\d+) VI(?: \+ (\d+) HMC)? \((\d+) dependency-VAE steps", line
    )
    assert m, line
    total, marginal, vi, hmc, dependency = (int(g or 0) for g in m.groups())
    assert marginal + vi + hmc == total  # every number the line shows is in its total
    assert vi + hmc == dependency == (steps or 3000)  # --steps N counts the dependency VAE's steps
    assert marginal == min(max(dependency // 4, 10), 1000)
    assert (hmc > 0) == (variant == "hhvaem")
    if steps == 13509:  # the reported line: 1000 + 12159 + 1350 now says 14509
        assert "14509 steps = 1000 marginal-VAE + 12159 VI + 1350 HMC (13509 dependency-VAE steps" in line


def test_hold_out_only_on_tables_that_can_spare_rows():
    assert len(quality.held_out_rows(499, 0)) == 0
    assert len(quality.held_out_rows(500, 0)) == 50
    assert len(quality.held_out_rows(50_000, 0)) == 1000
    df = _frame(600)
    train, held = quality.split_rows(df, seed=3)
    assert len(train) == 540 and len(held) == 60
    merged = pd.concat([train, held]).sort_values("a").reset_index(drop=True)
    pd.testing.assert_frame_equal(merged, df.sort_values("a").reset_index(drop=True))  # a partition of the rows
    assert quality.split_rows(df, seed=3)[1].equals(held)  # the seed decides


def test_train_prints_and_seals_a_held_out_quality_summary(tmp_path):
    path = tmp_path / "t.csv"
    _frame(520).to_csv(path, index=False)
    out = tmp_path / "m"
    res = runner.invoke(
        app, ["train", str(path), "--target", "y", "--steps", "30", "--threads", "1", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "468 rows to train on (52 more held out to measure quality)" in res.output
    manifest = read_manifest(out)  # the seal still matches after the metrics were added
    q = manifest["metrics"]["quality"]
    assert q["held_out"] is True and q["rows"] == 52 and q["table_rows"] == 520
    assert {"rmse_xu", "acc_xu", "target_rmse", "target_std"} <= set(q)
    assert all(math.isfinite(q[k]) and q[k] >= 0 for k in ("rmse_xu", "target_rmse", "target_std"))
    assert 0 <= q["acc_xu"] <= 1
    assert "quality on 52 held-out rows (not trained on)" in res.output
    assert f"RMSE {q['rmse_xu']:.3f} standard deviations" in res.output
    assert manifest["data"]["rows"] == 520  # the fingerprint is the table's, as given
    cal = manifest["calibration"]  # from the same held-out rows: no second model
    assert cal["cross_fit"] is False and cal["rows"] == 52 and q["cross_fit"] is False
    assert "calibrating the quantiles on 52 rows" in res.output and "cross-fit" not in res.output


def test_without_hold_out_or_calibration_the_summary_is_in_sample(tmp_path):
    path = tmp_path / "t.csv"
    _frame(200).to_csv(path, index=False)
    out = tmp_path / "m"
    args = ["train", str(path), "--target", "y", "--steps", "10", "--threads", "1", "--out", str(out)]
    res = runner.invoke(app, [*args, "--no-hold-out", "--no-calibrate"])
    assert res.exit_code == 0, res.output
    manifest = read_manifest(out)
    q = manifest["metrics"]["quality"]
    assert "calibration" not in manifest and q["held_out"] is False and q["cross_fit"] is False and q["rows"] == 200
    assert "in-sample, so optimistic" in res.output and "cross-fit" not in res.output


def test_without_held_out_rows_the_training_rows_are_scored_and_capped():
    train = _frame(1500)
    assert quality.rows_to_score(train, None, 0).shape == (1000, 4)
    small = _frame(200)
    assert quality.rows_to_score(small, None, 0) is small
    held = _frame(30)
    assert quality.rows_to_score(train, held, 0) is held


def test_the_summary_is_measured_through_the_served_graphs_and_described():
    artifact = os.environ.get("HHVAEM_TEST_ARTIFACT")
    if not artifact:
        pytest.skip("needs HHVAEM_TEST_ARTIFACT (a trained demo model)")
    from hhvaem.training.artifact import load_model
    from hhvaem.training.demo import demo_table
    from hhvaem.training.fit import FittedModel

    model, pp, _ = load_model(artifact)
    table = demo_table()[0].head(40)  # the model's columns the table lacks (an older demo's names) stay missing
    rows = pd.DataFrame({c.name: table.get(c.name, np.nan) for c in model.schema.columns})
    q = quality.measure(artifact, FittedModel(model, pp, {}), rows, False, 442, seed=0)
    assert q["rows"] == 40 and q["samples"] == quality.SAMPLES and not q["held_out"]
    assert 0.3 < q["rmse_xu"] < 1.5 and 0.3 < q["acc_xu"] <= 1  # the demo model imputes better than chance
    assert 0 < q["target_rmse"] < 2 * q["target_std"]
    text = quality.describe(q, ["disease_progression"])
    assert text.startswith("quality on 40 training rows (in-sample, so optimistic")
    assert f"target disease_progression: RMSE {q['target_rmse']:.4g} (in its units" in text


def test_score_lines_say_rows_rate_and_time_left():
    clock = FakeClock()
    lines = ScoreLines("scoring", every_seconds=10, clock=clock)
    got = []
    import hhvaem.cli as cli

    echo = cli.typer.echo
    cli.typer.echo = lambda text, err=False: got.append(text)
    try:
        clock.now += 2
        lines(128, 1280)
        clock.now += 5
        lines(256, 1280)  # within 10 s: no line
        clock.now += 11
        lines(1152, 1280)
        clock.now += 2
        lines(1280, 1280)
    finally:
        cli.typer.echo = echo
    assert got == [
        "scoring: 128/1280 rows, 64 rows/s, ETA 18 s",
        "scoring: 1152/1280 rows, 64 rows/s, ETA 2 s",
        "scoring: 1280/1280 rows, 64 rows/s, done in 20 s",
    ]


def test_score_writes_progress_lines_into_a_log(tmp_path):
    """`hhvaem score` with stdout and stderr piped (a log file, not a terminal) writes progress lines."""
    artifact = os.environ.get("HHVAEM_TEST_ARTIFACT")
    if not artifact:
        pytest.skip("needs HHVAEM_TEST_ARTIFACT (a trained demo model)")
    schema = read_manifest(artifact)["schema"]
    names = [c["name"] for c in schema["features"] if c["type"] in ("real", "positive")]
    rng = np.random.default_rng(0)
    rows = pd.DataFrame({n: rng.normal(50, 5, 300).round(1) for n in names[:1]})
    rows.to_csv(tmp_path / "rows.csv", index=False)
    cmd = [sys.executable, "-m", "hhvaem.cli", "score", artifact, str(tmp_path / "rows.csv"), str(tmp_path / "o.csv")]
    proc = subprocess.run(
        [*cmd, "--operation", "predict", "--samples", "10", "--chunk-rows", "100"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    progress = [line for line in proc.stderr.splitlines() if line.startswith("scoring: ")]
    assert progress[0].startswith("scoring: 100/300 rows, ") and ", ETA " in progress[0], proc.stderr
    assert re.fullmatch(r"scoring: 300/300 rows, \d+ rows/s, done in \d+ s", progress[-1]), progress
    assert proc.stdout.startswith(f"wrote {tmp_path / 'o.csv'}: 300 rows scored")


def test_estimator_verbose_prints_progress_with_the_time_left(capsys):
    from hhvaem import HHVAEMRegressor

    X, y = _frame(60)[["a", "b"]].to_numpy(), _frame(60)["y"].to_numpy()
    tiny = {"variant": "vaem", "steps": 30, "samples": 8, "overrides": {"hidden": 16, "marginal_hidden": 8}}
    HHVAEMRegressor(**tiny).fit(X, y)
    assert capsys.readouterr().out == ""  # silent by default
    HHVAEMRegressor(**tiny, verbose=True).fit(X, y)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[HHVAEMRegressor] stage 1 marginal VAEs: step 1/10, loss ")
    assert lines[0].endswith(", then stage 2 dependency VAE (30 steps)")
    assert any(line.startswith("[HHVAEMRegressor] stage 2 dependency VAE: 30 steps, loss ") for line in lines)


def test_quality_summary_is_json_and_extends_the_metrics(tmp_path):
    """record() keeps the other metrics and re-seals: the manifest reads back verified."""
    artifact = os.environ.get("HHVAEM_TEST_ARTIFACT")
    if not artifact:
        pytest.skip("needs HHVAEM_TEST_ARTIFACT (a trained demo model)")
    import shutil

    copy = Path(shutil.copytree(artifact, tmp_path / "m"))
    quality.record(copy, "first", {"x": 1.0})
    manifest = quality.record(copy, "quality", {"rmse_xu": 0.5})
    assert read_manifest(copy)["metrics"] == manifest["metrics"]
    assert manifest["metrics"]["first"] == {"x": 1.0} and manifest["metrics"]["quality"] == {"rmse_xu": 0.5}
    json.dumps(manifest["metrics"])
