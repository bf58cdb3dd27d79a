"""A schema column's labels (a name for each category code) and description: checked, carried through the
manifest, accepted in a code's place, and optional (schemas written before them read as before)."""

from __future__ import annotations

import pytest

from hhvaem.app.services.compatibility import schema_changes
from hhvaem.model.preprocessing import EncodingError, Preprocessor
from hhvaem.model.schema import Column, Schema, SchemaError

SEX = Column(
    "sex", "binary", categories=(1, 2), labels=("group 1", "group 2"), description="Sex as the source codes it."
)
SCHEMA = Schema(features=(SEX, Column("bmi", "positive", unit="kg/m²", description="Body mass index.")))


def test_labels_and_description_round_trip_and_old_schemas_read_without_them():
    d = SCHEMA.to_dict()
    assert d["features"][0] == {
        "name": "sex",
        "type": "binary",
        "categories": [1, 2],
        "labels": ["group 1", "group 2"],
        "description": "Sex as the source codes it.",
    }
    assert Schema.from_dict(d) == SCHEMA
    old = {"features": [{"name": "sex", "type": "binary", "categories": [1, 2]}], "targets": []}
    column = Schema.from_dict(old).features[0]
    assert column.labels is None and column.description is None
    assert Schema.from_dict(old).to_dict() == old  # nothing added to a schema that had neither


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"type": "positive", "labels": ("low",)}, "a numeric column has none"),
        ({"categories": (1, 2), "labels": ("a",)}, "1 labels for 2 categories"),
        ({"categories": (1, 2), "labels": ("a", "a")}, "duplicate labels"),
        ({"categories": (1, 2), "labels": ("a", "")}, "not one line of non-empty text"),
        ({"categories": (1, 2), "labels": ("a", 3)}, "not one line of non-empty text"),
        ({"categories": (1, 2), "labels": ("2", "1")}, "reads as a number"),
        ({"categories": ("x", "y"), "labels": ("y", "x")}, "the value of another category"),
        ({"categories": (1, 2), "labels": "ab"}, "labels must be a list"),
        ({"categories": (1, 2), "description": "  "}, "description must be non-empty text"),
    ],
)
def test_unusable_labels_are_refused_with_the_reason(kwargs, reason):
    with pytest.raises(SchemaError, match=reason) as e:
        Column(**{"name": "c", "type": "binary", **kwargs})
    assert "column 'c'" in str(e.value)


def test_a_label_stands_for_its_code_and_codes_still_work():
    prep = Preprocessor(SCHEMA, {})
    for strict in (False, True):
        assert prep.encode_value(SEX, "group 2", strict=strict) == prep.encode_value(SEX, 2, strict=strict) == 1.0
        assert prep.encode_value(SEX, " group 1 ", strict=strict) == prep.encode_value(SEX, 1, strict=strict) == 0.0
    named = r"labels \('group 1', 'group 2'\)"
    with pytest.raises(EncodingError, match=rf"category numbers \(1, 2\) or {named}, got text 'group 3'"):
        prep.encode_value(SEX, "group 3", strict=True)
    with pytest.raises(EncodingError, match=rf"unknown category 3 \(expected one of 1, 2 or {named}\)"):
        prep.encode_value(SEX, 3, strict=True)


def test_a_new_version_may_add_labels_but_not_drop_one():
    unlabelled = {"features": [{"name": "sex", "type": "binary", "categories": [1, 2]}], "targets": []}
    labelled = Schema(features=(SEX,)).to_dict()
    assert schema_changes(unlabelled, labelled) == []
    assert schema_changes(labelled, unlabelled) == ["feature 'sex' loses the labels 'group 1', 'group 2'"]
