"""The model registry (issue #11): manifests refused at registration for what they are, an artifact changed after
registration refused everywhere (and served again once restored), the view that serves through a database outage
and picks up what another process registered at its next refresh."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.proxy import TcpProxy
from hhvaem.app.db.availability import DatabaseUnavailable
from hhvaem.app.db.database import Database, migrate, normalize_url
from hhvaem.app.services.registry import ModelNotFound, ModelRegistry
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
