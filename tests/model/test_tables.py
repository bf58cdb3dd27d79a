"""The table reader keeps every cell on its row (issue #11): ragged lines are read right or refused with their line
number, never shifted; limits on decompressed size and rows; numbers too large for a float."""

from __future__ import annotations

import csv
import gzip
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hhvaem.model.io.tables import TableError, TableWarning, read_table, read_table_with_notes


def write(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ---- the reported case: a trailing comma on every line --------------------------------------------------------


def test_trailing_comma_on_every_line_keeps_every_value_in_place(tmp_path: Path) -> None:
    # Before: pandas took `cement` as the index and the reader realigned by label: every row all-missing.
    p = write(tmp_path, "cement,water,age\n300,180,28,\n310,,14,\n320,170,7,\n")
    with pytest.warns(TableWarning, match="3 data lines end with empty fields"):
        df = read_table(p)
    assert list(df.columns) == ["cement", "water", "age"]
    assert df["cement"].tolist() == [300, 310, 320]
    assert df["water"].isna().tolist() == [False, True, False] and df["water"][0] == 180
    assert df["age"].tolist() == [28, 14, 7]


def test_trailing_comma_in_the_header_too(tmp_path: Path) -> None:
    df, notes = read_table_with_notes(write(tmp_path, "a,b,\n1,2,\n3,4,\n"))
    assert list(df.columns) == ["a", "b"] and df.to_dict("list") == {"a": [1, 3], "b": [2, 4]}
    assert len(notes) == 1 and "dropped" in notes[0]


def test_some_lines_with_a_trailing_comma(tmp_path: Path) -> None:
    df, notes = read_table_with_notes(write(tmp_path, "a,b\n1,2,\n3,4\n5,,\n"))
    assert df["a"].tolist() == [1, 3, 5] and df["b"].tolist()[:2] == [2, 4] and math.isnan(df["b"][2])
    assert "2 data lines" in notes[0]


@pytest.mark.parametrize(
    ("text", "line", "fields"),
    [
        ("a,b\n1,2\n3,4,5\n", 3, 3),  # a value beyond the header
        ("a,b,c\n1,2,3\n4,5\n", 3, 2),  # a line too short: which cell is missing?
        ("a,b\n1,2\n\n3,4,x,y\n", 4, 4),  # blank lines do not shift the line number
        ('a,b\n"1,5",2\n1,5,2\n', 3, 3),  # an unquoted comma
    ],
)
def test_ragged_lines_are_refused_with_their_line_number(tmp_path: Path, text: str, line: int, fields: int) -> None:
    with pytest.raises(TableError, match=rf"line {line} has {fields} field") as e:
        read_table(write(tmp_path, text))
    assert "\n" not in str(e.value)


def test_an_unnamed_column_with_values_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="line 2 has 3 fields but the header names 2 columns"):
        read_table(write(tmp_path, "a,b,\n1,2,3\n"))


def test_quoted_commas_and_newlines_stay_in_their_cell(tmp_path: Path) -> None:
    df = read_table(write(tmp_path, 'a,note,b\n1,"x, y",2\n3,"two\nlines",4\n'))
    assert df.to_dict("list") == {"a": [1, 3], "note": ["x, y", "two\nlines"], "b": [2, 4]}


def test_one_column_table_keeps_its_empty_cells(tmp_path: Path) -> None:
    # A one-column CSV writes a missing cell as an empty line: it is a row, not nothing.
    df = read_table(write(tmp_path, "age\n50\n\n70\n"))
    assert len(df) == 3 and df["age"].isna().tolist() == [False, True, False]


# ---- limits -------------------------------------------------------------------------------------------------


def test_decompressed_size_is_bounded(tmp_path: Path) -> None:
    p = tmp_path / "bomb.csv.gz"
    with gzip.open(p, "wt") as f:  # 200 KiB of zeros compress to a few hundred bytes
        f.write("age\n" + "0\n" * 100_000)
    assert p.stat().st_size < 2_000
    with pytest.raises(TableError, match=r"bomb.csv.gz: larger than 64 KiB once decompressed"):
        read_table(p, max_bytes=64 * 1024)
    assert len(read_table(p, max_bytes=1 << 20)) == 100_000


def test_rows_are_bounded(tmp_path: Path) -> None:
    p = write(tmp_path, "a\n" + "1\n" * 11)
    with pytest.raises(TableError, match="more than 10 data rows"):
        read_table(p, max_rows=10)
    pd.DataFrame({"a": np.arange(11.0)}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(TableError, match="11 data rows, more than 10"):
        read_table(tmp_path / "t.parquet", max_rows=10)
    with pytest.raises(TableError, match="once decompressed"):
        read_table(tmp_path / "t.parquet", max_bytes=8)


def test_a_number_too_large_for_a_float_is_infinity_not_a_crash(tmp_path: Path) -> None:
    df = read_table(write(tmp_path, "a,b\n" + "9" * 400 + ",1\n2,3\n"))
    assert df["a"].dtype == np.float64 and df["a"].tolist() == [math.inf, 2.0]


# ---- the property: any table, round-tripped, keeps every cell on its row --------------------------------------

_TEXT = st.text(alphabet=st.sampled_from(list("abcxyz ,;\"'\n\t")), min_size=0, max_size=8).map(
    lambda s: "t" + s.strip() + "z"  # never a number, never a missing token, no blanks at the ends
)
_NUMBER = st.one_of(st.integers(-(10**6), 10**6), st.floats(allow_nan=False, allow_infinity=False, width=64))


@st.composite
def tables(draw) -> tuple[list[str], list[str], list[list]]:
    """(names, kinds, rows): 1-5 columns, each numbers or text, 1-20 rows, holes anywhere."""
    width = draw(st.integers(1, 5))
    names = [f"c{i}" for i in range(width)]
    kinds = [draw(st.sampled_from(["number", "text"])) for _ in names]
    n = draw(st.integers(1, 20))
    rows = [[draw(st.one_of(st.none(), _NUMBER if k == "number" else _TEXT)) for k in kinds] for _ in range(n)]
    return names, kinds, rows


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(table=tables(), trailing=st.sampled_from(["none", "data", "every line"]), gz=st.booleans())
def test_every_cell_stays_on_its_row(tmp_path_factory: pytest.TempPathFactory, table, trailing: str, gz: bool):
    names, kinds, rows = table
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    # The export format of the issue: an empty field after the last one, on the data lines (or on every line).
    writer.writerow(names + ([""] if trailing == "every line" else []))
    for row in rows:
        cells = [("" if v is None else repr(v) if isinstance(v, float) else v) for v in row]
        writer.writerow(cells + ([""] if trailing != "none" else []))
    text = buf.getvalue()
    folder = tmp_path_factory.mktemp("roundtrip")
    path = folder / ("t.csv.gz" if gz else "t.csv")
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    df, _ = read_table_with_notes(path)
    assert list(df.columns) == names and len(df) == len(rows)
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            got = df.iat[i, j]
            if value is None:
                assert pd.isna(got), (i, names[j], got)
            elif kinds[j] == "number":
                assert float(got) == float(value), (i, names[j], got, value)
            else:
                assert got == value, (i, names[j], got, value)


def test_verbatim_columns_keep_their_text_exactly(tmp_path: Path) -> None:
    """Issue #22, 4: batch scoring passes the columns the model does not use through as the file has them."""
    p = write(tmp_path, "id,age,note\n007,50,NA\n00123,,None\n9,61,null\n10,62,nan\n11,63, lead\n12,64,\n")
    df = read_table(p, verbatim=lambda name: name != "age")
    assert df["id"].tolist() == ["007", "00123", "9", "10", "11", "12"]
    assert df["note"].tolist() == ["NA", "None", "null", "nan", " lead", ""]
    assert df["age"].tolist()[:1] == [50] and np.isnan(df["age"][1])  # the model's columns as before
    plain = read_table(p)
    assert plain["id"].tolist() == [7, 123, 9, 10, 11, 12] and plain["note"].isna().sum() == 5


def test_trailing_blank_lines_are_never_rows(tmp_path: Path) -> None:
    """Issue #22, 6: in a one-column table, blank lines at the end of the file became missing rows."""
    df = read_table(write(tmp_path, "age\n50\n\n70\n\n\n"))
    assert len(df) == 3 and df["age"].tolist()[0] == 50 and np.isnan(df["age"][1]) and df["age"][2] == 70
    assert len(read_table(write(tmp_path, "age,bmi\n50,30\n\n\n"))) == 1


def test_a_column_of_true_and_false_is_flagged(tmp_path: Path) -> None:
    df = read_table(write(tmp_path, "a,b\nTRUE,1\nFALSE,2\n"))
    assert df.attrs["boolean_columns"] == ["a"] and df["a"].tolist() == [1.0, 0.0]


def test_a_blank_before_a_field_is_part_of_it(tmp_path: Path) -> None:
    """RFC 4180 (and pandas' default): a numeric cell with a blank still reads as its number; text keeps it."""
    df = read_table(write(tmp_path, "a,b\n1, 2\n3, x\n"))
    assert df["a"].tolist() == [1, 3] and df["b"].tolist() == ["2", "x"]
