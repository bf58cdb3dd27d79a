"""Real categorical columns (issue #23, item 5): the levels an inferred categorical may have grow with the evidence
(most levels seen at least 5 times), so 54 regions in 18,249 rows are a categorical; an identifier or free text is
still refused, the message naming the way out as its reader gives it: `types=` in Python, flags on the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from hhvaem.cli import app
from hhvaem.model.io.tables import TableError
from hhvaem.training.tabular import infer_schema


def regions_table(rows: int = 18_249, levels: int = 54, seed: int = 0) -> pd.DataFrame:
    """The user's table: 54 regions (about 338 rows each), an id per row, and a price."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": [f"row-{i:06d}" for i in range(rows)],
            "region": [f"region_{r:02d}" for r in rng.integers(0, levels, rows)],
            "volume": rng.lognormal(10, 1, rows),
            "price": rng.normal(1.4, 0.4, rows),
        }
    )


def test_54_regions_in_18k_rows_are_a_categorical() -> None:
    schema = infer_schema(regions_table().drop(columns="id"), ["price"])
    region = schema.column("region")
    assert region.type == "categorical" and region.n_categories == 54


def test_an_identifier_is_refused_naming_the_evidence() -> None:
    with pytest.raises(TableError) as e:
        infer_schema(regions_table(), ["price"])
    assert str(e.value).startswith(
        "column 'id': 18,249 distinct text values in 18,249 observed rows, too many for a categorical: most levels "
        "are seen fewer than 5 times (median 1, 18,249 seen once)"
    )


def test_free_text_with_a_few_repeats_is_refused_too() -> None:
    """Mostly distinct notes, a few repeated ("ok" 300 times): the median note is still seen once."""
    rng = np.random.default_rng(1)
    notes = [f"note {i}" for i in range(700)] + ["ok"] * 300
    df = pd.DataFrame({"note": rng.permutation(notes), "y": rng.normal(size=1000)})
    with pytest.raises(TableError, match=r"column 'note': 701 distinct text values .* \(median 1, 700 seen once\)"):
        infer_schema(df, ["y"])


def test_the_estimator_names_its_types_argument() -> None:
    from hhvaem.estimators import HHVAEMImputer

    with pytest.raises(TableError) as e:
        HHVAEMImputer(target="price", steps=10).fit(regions_table(rows=300))
    message = str(e.value)
    assert "column 'id': 300 distinct text values in 300 observed rows" in message
    assert "leave it out of X" in message and "types={'id': 'categorical'}" in message
    assert "--" not in message  # no CLI flag


def test_the_cli_names_its_flags(tmp_path: Path) -> None:
    data = tmp_path / "prices.csv"
    regions_table(rows=300).to_csv(data, index=False)
    res = CliRunner().invoke(app, ["train", str(data), "--target", "price", "--out", str(tmp_path / "m")])
    assert res.exit_code == 2
    assert "error: column 'id': 300 distinct text values in 300 observed rows" in res.output
    assert "leave it out (--drop id)" in res.output and "declare it categorical in --schema" in res.output
    assert not (tmp_path / "m").exists()
