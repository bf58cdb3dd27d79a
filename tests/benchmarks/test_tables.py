"""benchmarks/tables.py: zero-inflated positive columns are written as `hhvaem train` would infer them."""

from __future__ import annotations

import json

import pandas as pd

from benchmarks.tables import retype_zero_inflated


def test_positive_columns_with_many_zeros_become_zero_positive(tmp_path):
    df = pd.DataFrame(
        {
            "slag": [0.0, 0.0, 3.5, 4.0, 7.0, 9.0, 11.0, 12.5, 13.0, 20.0],  # 20 % zeros
            "cement": [0.0, 1.5, 3.5, 4.0, 7.0, 9.0, 11.0, 12.5, 13.0, 20.0],  # 10 %: the threshold
            "water": [1.0, 1.5, 3.5, 4.0, 7.0, 9.0, 11.0, 12.5, 13.0, 20.0],  # none
            "t": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0],
        }
    )
    df.to_csv(tmp_path / "data.csv", index=False)
    schema = {
        "features": [{"name": c, "type": "positive"} for c in ("slag", "cement", "water")],
        "targets": [{"name": "t", "type": "real"}],
    }
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    assert retype_zero_inflated(tmp_path) == ["slag", "cement"]
    types = {c["name"]: c["type"] for c in json.loads((tmp_path / "schema.json").read_text())["features"]}
    assert types == {"slag": "zero_positive", "cement": "zero_positive", "water": "positive"}
    assert retype_zero_inflated(tmp_path) == []  # nothing left to change
