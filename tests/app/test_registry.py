"""The model registry (issue #11): manifests refused at registration for what they are, an artifact changed after
registration refused everywhere (and served again once restored), the view that serves through a database outage
and picks up what another process registered at its next refresh; retired versions and schema checks (issue #22,
8)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.proxy import TcpProxy
from hhvaem.app.db import repository as repo
from hhvaem.app.db.availability import DatabaseUnavailable
from hhvaem.app.db.database import Database, migrate, normalize_url
from hhvaem.app.services.compatibility import schema_changes
from hhvaem.app.services.registry import IncompatibleSchema, ModelNotFound, ModelRegistry, VersionRetired
from hhvaem.model.io.artifact import ArtifactError, manifest_text
from tests.app.service import MODEL, artifact_dir, pg_schema


@pytest.fixture(scope="module")
def artifact(request: pytest.FixtureRequest) -> Path:
    return Path(artifact_dir(request))


def copy(artifact: Path, dest: Path, edit=None, seal: bool = True) -> Path:
    """A copy of `artifact`, its manifest changed by `edit` and sealed again (as a writer would: what is refused is
    then refused for its content), or, with `seal=False`, edited by hand."""
    shutil.copytree(artifact, dest)
    if edit is not None:
        manifest = json.loads((dest / "manifest.json").read_text())
        edit(manifest)
        text = manifest_text(manifest) if seal else json.dumps(manifest)
        (dest / "manifest.json").write_text(text)
    return dest


def sqlite_registry(tmp_path: Path, **kw) -> ModelRegistry:
    url = f"sqlite:///{(tmp_path / 'registry.sqlite3').as_posix()}"
    migrate(url)
    return ModelRegistry(Database(url), threads=1, **kw)


def _set(path: str, value):
    def edit(m):
        *parents, last = path.split(".")
        target = m
        for p in parents:
            target = target[p]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("schema", KeyError), "`schema` must be a JSON object, but it is missing"),
        (_set("files", ["model.pt"]), "`files` must be a JSON object, but it is a list"),
        (_set("name", "a\0b"), "is not usable: a model name must be"),
        (_set("name", "a/b"), "is not usable"),
        (_set("name", "a\nINFO forged log line"), "is not usable"),
        (_set("name", "x" * 201), "is not usable"),
        (lambda m: m["files"].update({"../../etc/passwd": "0" * 64}), "not a file in the directory"),
        (_set("schema.features", "age"), "`schema.features` must be a list"),
        (_set("sampler.hmc_steps", 12), "'steps', the manifest says 12"),
    ],
    ids=[
        "no-schema",
        "files-list",
        "nul-name",
        "slash-name",
        "newline-name",
        "long-name",
        "traversal",
        "features",
        "hmc-steps",
    ],  # fmt: skip
)
def test_a_manifest_is_refused_for_what_it_is(artifact: Path, tmp_path: Path, edit, message: str) -> None:
    registry = sqlite_registry(tmp_path)
    bad = copy(artifact, tmp_path / "bad", edit)
    with pytest.raises(ArtifactError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        registry.register(bad)
    assert "\n" not in str(e.value)
    assert registry.records() == []  # nothing registered


def test_a_manifest_edited_after_export_is_refused_at_registration(artifact: Path, tmp_path: Path) -> None:
    registry = sqlite_registry(tmp_path)

    def edit(m):
        first = next(iter(m["preprocessing"]))
        m["preprocessing"][first]["mean"] += 1.0

    with pytest.raises(ArtifactError, match="edited after export"):
        registry.register(copy(artifact, tmp_path / "edited", edit, seal=False))
    assert registry.records() == []


def test_an_artifact_changed_after_registration_is_broken_until_restored(artifact: Path, tmp_path: Path) -> None:
    registry = sqlite_registry(tmp_path)
    path = copy(artifact, tmp_path / "m")
    registry.register(path)
    assert registry.resolve(MODEL).version == 1 and registry.health() == {f"{MODEL} v1": "ok"}
    original = (path / "manifest.json").read_bytes()
    manifest = json.loads(original)
    first = next(iter(manifest["preprocessing"]))
    manifest["preprocessing"][first]["mean"] += 1.0  # the edit the issue made: accepted before, served on
    (path / "manifest.json").write_text(json.dumps(manifest))
    registry.refresh()
    with pytest.raises(ArtifactError, match="manifest.json changed since registration"):
        registry.resolve(MODEL)
    assert registry.health()[f"{MODEL} v1"].startswith("broken: ")
    (path / "manifest.json").write_bytes(original)
    registry.refresh()
    assert registry.resolve(MODEL).version == 1 and registry.health() == {f"{MODEL} v1": "ok"}
    graph = next(f for f in manifest["files"] if f.endswith(".onnx"))
    with open(path / graph, "ab") as f:
        f.write(b"\0")
    registry.refresh()
    with pytest.raises(ArtifactError, match=f"checksum mismatch for {graph}"):
        registry.resolve(MODEL)


def test_a_process_that_loads_a_changed_artifact_refuses_it_too(artifact: Path, tmp_path: Path) -> None:
    first = sqlite_registry(tmp_path)
    path = copy(artifact, tmp_path / "m")
    first.register(path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["note"] = "edited"
    (path / "manifest.json").write_text(json.dumps(manifest))
    second = ModelRegistry(first.database, threads=1)  # a new process on the same registry
    second.refresh()
    with pytest.raises(ArtifactError, match="changed since registration"):
        second.resolve(MODEL)
    assert second.health()[f"{MODEL} v1"].startswith("broken: ")


def test_another_process_sees_registrations_and_activations_at_its_next_refresh(artifact, tmp_path) -> None:
    one = sqlite_registry(tmp_path)
    other = ModelRegistry(one.database, threads=1)
    other.refresh()
    one.register(copy(artifact, tmp_path / "v1"))
    with pytest.raises(ModelNotFound):
        other.resolve(MODEL)  # not before its refresh
    other.refresh()
    assert other.resolve(MODEL).version == 1
    one.register(copy(artifact, tmp_path / "v2", _set("note", "second")))
    one.activate(MODEL, 1)
    assert one.resolve(MODEL).version == 1  # here at once
    other.refresh()
    assert other.resolve(MODEL).version == 1 and [r.version for r in other.records()] == [1, 2]
    one.activate(MODEL, 2)
    other.refresh()
    assert other.resolve(MODEL).version == 2


def test_a_restart_keeps_the_activation_an_admin_made(artifact: Path, tmp_path: Path) -> None:
    """Issue #22, 1: a process starting on the models folder (a restart, a new replica) used to make the version it
    found active again, undoing an admin's activation of a newer version (and their return to an older one)."""
    models = tmp_path / "models"
    models.mkdir()
    first = sqlite_registry(tmp_path)
    first.register_dir(copy(artifact, models / "v1").parent)
    assert first.resolve(MODEL).version == 1
    first.register(copy(artifact, tmp_path / "v2", _set("note", "second")), activate=True)  # the admin route
    assert first.resolve(MODEL).version == 2
    restarted = ModelRegistry(first.database, threads=1)
    restarted.register_dir(models)  # logs "version 1 known"
    restarted.refresh()
    assert restarted.resolve(MODEL).version == 2
    first.refresh()
    assert first.resolve(MODEL).version == 2
    first.activate(MODEL, 1)  # back to the older one, then v2's folder joins the models folder: still v1
    shutil.copytree(tmp_path / "v2", models / "v2")
    again = ModelRegistry(first.database, threads=1)
    again.register_dir(models)
    again.refresh()
    assert again.resolve(MODEL).version == 1
    assert [(r.version, r.active) for r in again.records()] == [(1, True), (2, False)]


def test_a_start_activates_a_new_artifact_or_a_name_with_no_active_version(artifact: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    registry = sqlite_registry(tmp_path)
    registry.register(copy(artifact, models / "v1"), activate=False)
    with pytest.raises(ModelNotFound):
        registry.resolve(MODEL)
    restarted = ModelRegistry(registry.database, threads=1)
    restarted.register_dir(models)
    assert restarted.resolve(MODEL).version == 1  # nothing was active: the folder's version serves
    copy(artifact, models / "v2", _set("note", "second"))
    restarted.register_dir(models)
    assert restarted.resolve(MODEL).version == 2  # a new artifact in the folder is a new deployment


def test_the_view_serves_through_a_database_outage(artifact: Path, tmp_path: Path) -> None:
    with pg_schema() as url:
        migrate(url)
        parsed = normalize_url(url)
        proxy = TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5432)).start()
        database = Database(parsed.set(host="127.0.0.1", port=proxy.port), timeout=2)
        try:
            registry = ModelRegistry(database, threads=1)
            registry.register(copy(artifact, tmp_path / "m"))
            proxy.mode = "refuse"
            with pytest.raises(DatabaseUnavailable):
                registry.refresh()
            assert registry.refresh_error and "unreachable" in registry.refresh_error
            assert registry.resolve(MODEL).version == 1  # from the view: no database needed
            with pytest.raises(ModelNotFound):
                registry.resolve("nope")
            proxy.mode = "forward"
            registry.refresh()
            assert registry.refresh_error is None
        finally:
            database.dispose()
            proxy.stop()


def test_names_that_cannot_be_models_never_reach_the_database(tmp_path: Path) -> None:
    registry = sqlite_registry(tmp_path)
    for name in ("a\0b", "a/b", "", "x" * 300, "\ud800"):
        with pytest.raises(ModelNotFound):
            registry.resolve(name)


# ---- versions (issue #22, 8) ------------------------------------------------------------------------------------


def test_a_retired_version_is_never_served_here_at_once_and_elsewhere_at_the_next_refresh(artifact, tmp_path) -> None:
    one = sqlite_registry(tmp_path)
    one.register(copy(artifact, tmp_path / "v1"))
    one.register(copy(artifact, tmp_path / "v2", _set("note", "second")))  # active
    other = ModelRegistry(one.database, threads=1)  # another replica, serving version 1 to a pinned session
    other.refresh()
    assert other.resolve(MODEL, 1).version == 1 and (MODEL, 1) in other.loaded()
    record = one.retire(MODEL, 1, "superseded by version 2")
    assert record is not None and record.retired and record.retired_reason == "superseded by version 2"
    with pytest.raises(VersionRetired, match="version 1 was retired .* \\(superseded by version 2\\)"):
        one.resolve(MODEL, 1)
    assert other.resolve(MODEL, 1).version == 1  # not before its refresh ...
    other.refresh()
    with pytest.raises(VersionRetired) as e:  # ... then never again, and its engine is let go
        other.resolve(MODEL, 1)
    assert (e.value.retired_at, e.value.reason) == (record.retired_at, "superseded by version 2")
    assert (MODEL, 1) not in other.loaded()
    assert other.retired() == {f"{MODEL} v1": f"retired {record.retired_at.isoformat(timespec='seconds')} "
                               "(superseded by version 2)"}  # fmt: skip
    assert other.health() == {f"{MODEL} v2": "ok"} and other.resolve(MODEL).version == 2
    assert one.retire(MODEL, 1, "again") == record  # idempotent: the first retirement stands
    with pytest.raises(repo.StateConflict, match="active version"):
        one.retire(MODEL, 2)
    with pytest.raises(repo.StateConflict, match="was retired"):
        one.activate(MODEL, 1)
    assert one.retire(MODEL, 9) is None


def test_a_restart_never_brings_a_retired_version_back(artifact: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    first = sqlite_registry(tmp_path)
    copy(artifact, models / "v1")
    copy(artifact, models / "v2", _set("note", "second"))
    first.register_dir(models)
    first.retire(MODEL, 1, "withdrawn")
    restarted = ModelRegistry(first.database, threads=1)
    restarted.register_dir(models)  # v1's folder is still there
    restarted.refresh()
    with pytest.raises(VersionRetired):
        restarted.resolve(MODEL, 1)
    assert (MODEL, 1) not in restarted.loaded()  # not even loaded
    assert [(r.version, r.active, r.retired) for r in restarted.records()] == [(1, False, True), (2, True, False)]
    with pytest.raises(VersionRetired):  # an admin registering its artifact again
        restarted.register(models / "v1")


def incompatible(m: dict) -> None:
    """The demo's schema with a feature renamed, a category replaced and a type changed: the graphs still run."""
    for column in m["schema"]["features"]:
        if column["name"] == "bmi":
            column["name"] = "body_mass_index"
        elif column["name"] == "sex":
            column["categories"] = [1, 3]
        elif column["name"] == "age":
            column["type"] = "real"
    m["preprocessing"]["body_mass_index"] = m["preprocessing"].pop("bmi")


def test_an_incompatible_schema_is_refused_unless_forced(artifact: Path, tmp_path: Path, caplog) -> None:
    registry = sqlite_registry(tmp_path)
    registry.register(copy(artifact, tmp_path / "v1"))
    changed = copy(artifact, tmp_path / "changed", incompatible)
    expected = ["feature 'age' changes from positive to real", "feature 'sex' loses the category 2",
                "feature 'bmi' is missing"]  # fmt: skip
    with pytest.raises(IncompatibleSchema, match=f"differs from '{MODEL}' version 1's") as e:
        registry.register(changed)
    assert e.value.changes == expected
    assert [r.version for r in registry.records()] == [1] and registry.resolve(MODEL).version == 1
    done = registry.register(changed, force=True)
    assert done.created and done.record.version == 2 and list(done.schema_changes) == expected
    assert registry.resolve(MODEL).version == 2
    # A start on a models folder is the deployment: a changed schema there is registered, with a warning.
    models = tmp_path / "models"
    copy(artifact, models / "v1")  # known: nothing changes, nothing to warn about
    copy(artifact, models / "v3", _set("note", "the old schema again"))
    restarted = ModelRegistry(registry.database, threads=1)
    caplog.clear()
    restarted.register_dir(models)
    assert restarted.resolve(MODEL).version == 3
    assert "version 3 breaks the clients of version 2: " in caplog.text
    assert "feature 'body_mass_index' is missing" in caplog.text and "version 1 breaks" not in caplog.text


def _col(name: str, kind: str = "real", *categories: str, unit: str | None = None) -> dict:
    return {"name": name, "type": kind, **({"categories": list(categories)} if categories else {}),
            **({"unit": unit} if unit else {})}  # fmt: skip


OLD_SCHEMA = {"features": [_col("a"), _col("b", "categorical", "x", "y")], "targets": [_col("y", unit="kg")]}


@pytest.mark.parametrize(
    ("features", "targets", "changes"),
    [
        ([_col("a"), _col("b", "categorical", "x", "y", "z"), _col("c")], [_col("y", unit="kg"), _col("z")], []),
        ([_col("b", "categorical", "y"), _col("a")], [_col("y", unit="g")],
         ["feature 'b' loses the category 'x'", "target 'y' changes unit from 'kg' to 'g'"]),
        ([_col("a"), _col("y")], [_col("b", "categorical", "x", "y")],
         ["feature 'b' becomes a target", "target 'y' becomes a feature"]),
        ([_col("a", "positive"), _col("b", "categorical", "x", "y")], [],
         ["feature 'a' changes from real to positive", "target 'y' is missing"]),
    ],
    ids=["additions-and-order", "category-unit", "roles", "type-target"],
)  # fmt: skip
def test_schema_changes_name_what_breaks_the_clients(features: list, targets: list, changes: list[str]) -> None:
    assert schema_changes(OLD_SCHEMA, {"features": features, "targets": targets}) == changes
