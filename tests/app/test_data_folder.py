"""No hidden shared state (issue #23, item 6): a `hhvaem serve` that cannot listen changes nothing, the demo keeps
its own data folder, `hhvaem info` shows what is in use, `hhvaem reset` clears it after a confirmation."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hhvaem.app.core.config import make_settings
from hhvaem.cli import app

runner = CliRunner()


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data folder of the test's own (tmp/data), nothing from the developer's environment."""
    monkeypatch.setenv("HHVAEM_DATA_DIR", str(tmp_path / "data"))
    for name in ("HHVAEM_DATABASE_URL", "DATABASE_URL", "HHVAEM_MODELS_DIR"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture()
def models(tmp_path: Path, demo_artifact: str) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "diabetes").symlink_to(Path(demo_artifact).resolve())
    return folder


def _hhvaem(*args: str, data: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("HHVAEM_DATABASE_URL", "DATABASE_URL")}
    environ["HHVAEM_DATA_DIR"] = str(data)
    code = "from hhvaem.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=environ, capture_output=True, text=True, timeout=timeout
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _register(data: Path, *names: str) -> None:
    """Registry rows as a start would write them (without loading a model: these tests read the registry only)."""
    from hhvaem.app.db import repository as repo
    from hhvaem.app.db.database import Database, migrate

    settings = make_settings(data_dir=data)
    data.mkdir(parents=True, exist_ok=True)
    migrate(settings.database_url)
    database = Database(settings.database_url)
    with database.transaction() as tx:
        for name in names:
            repo.register_model(tx, name, f"/models/{name}", "0" * 64, "5")
    database.dispose()


def _registry_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT name, version, path FROM models ORDER BY name, version").fetchall()


def test_a_serve_that_cannot_listen_changes_nothing(tmp_path: Path, models: Path) -> None:
    """The user's report: a serve on a taken port had registered the model already. Now it exits 2 naming the
    flag, and the data folder (so the SQLite registry) is not even created."""
    data = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = _hhvaem("serve", "--port", str(port), "--models", str(models), data=data)
    assert run.returncode == 2, run.stderr
    assert f"error: --port {port}: 127.0.0.1:{port} is already in use" in run.stderr
    assert "Traceback" not in run.stderr
    assert not data.exists()  # no database, no registration, nothing


def test_serve_listens_on_the_socket_it_bound_and_registers_once_up(tmp_path: Path, models: Path) -> None:
    data, port = tmp_path / "data", _free_port()
    environ = {k: v for k, v in os.environ.items() if k not in ("HHVAEM_DATABASE_URL", "DATABASE_URL")}
    environ["HHVAEM_DATA_DIR"] = str(data)
    code = "from hhvaem.cli import main; main()"
    args = [sys.executable, "-c", code, "serve", "--port", str(port), "--models", str(models)]
    proc = subprocess.Popen(args, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, status = time.monotonic() + 90, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    status = r.status
                    break
            except OSError:
                time.sleep(0.3)
        assert status == 200, proc.stdout.read() if proc.poll() is not None else "no answer"
        assert [row[:2] for row in _registry_rows(data / "hhvaem.db")] == [("diabetes", 1)]
        # A second serve on the same port now fails before touching that registry.
        again = _hhvaem("serve", "--port", str(port), "--models", str(models), data=tmp_path / "other")
        assert again.returncode == 2 and "is already in use" in again.stderr
        assert not (tmp_path / "other").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_demo_has_its_own_data_folder_and_registry(tmp_path: Path) -> None:
    user = make_settings(data_dir=tmp_path / "data", database_url="postgresql://u:secret@db/hhvaem")
    demo = user.for_demo()
    assert demo.data_dir == demo.models_dir == tmp_path / "data" / "demo"
    assert demo.database_url == f"sqlite:///{(tmp_path / 'data' / 'demo' / 'hhvaem.db').as_posix()}"
    assert demo.sqlite_path == tmp_path / "data" / "demo" / "hhvaem.db" != user.sqlite_path
    assert user.for_demo(tmp_path / "elsewhere").sqlite_path == tmp_path / "elsewhere" / "hhvaem.db"


def test_a_demo_that_cannot_listen_fails_before_training(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = _hhvaem("demo", "--port", str(port), data=data)
    assert run.returncode == 2 and f"--port {port}:" in run.stderr and "training" not in run.stderr
    assert not (data / "demo").exists()


def test_info_shows_folder_database_and_registry_and_creates_nothing(env: Path) -> None:
    data = env / "data"
    res = runner.invoke(app, ["info"])
    assert res.exit_code == 0, res.output
    assert f"data folder: {data} (not created yet)" in res.output
    assert f"database:    sqlite:///{(data / 'hhvaem.db').as_posix()}" in res.output
    assert "registry:    empty (no database yet" in res.output
    assert not data.exists()

    _register(data, "diabetes", "diabetes")
    res = runner.invoke(app, ["info"])
    assert res.exit_code == 0, res.output
    assert "registry:    2 versions\n" in res.output
    assert "  diabetes v1  inactive           /models/diabetes\n" in res.output
    assert "  diabetes v2  active             /models/diabetes\n" in res.output
    demo = runner.invoke(app, ["info", "--demo"])
    assert f"data folder: {data / 'demo'}" in demo.output and "registry:    empty" in demo.output


def test_info_never_shows_a_password(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HHVAEM_DATABASE_URL", "postgresql://hhvaem:s3cret@127.0.0.1:1/none")
    monkeypatch.setenv("HHVAEM_DATABASE_TIMEOUT_SECONDS", "1")
    res = runner.invoke(app, ["info"])
    assert "database:    postgresql://hhvaem:***@127.0.0.1:1/none" in res.output
    assert "s3cret" not in res.output
    assert res.exit_code == 2 and "registry: cannot read the database" in res.output


def test_reset_clears_the_registry_and_batch_files_after_confirmation(env: Path, models: Path) -> None:
    data = env / "data"
    _register(data, "diabetes")
    (data / "batch" / "job1").mkdir(parents=True)
    (data / "batch" / "job1" / "input.csv").write_text("a\n1\n")
    assert _registry_rows(data / "hhvaem.db")

    res = runner.invoke(app, ["reset"], input="n\n")
    assert res.exit_code == 2 and "not confirmed; nothing was deleted" in res.output
    assert (data / "hhvaem.db").exists() and (data / "batch").exists()

    res = runner.invoke(app, ["reset"], input="y\n")
    assert res.exit_code == 0, res.output
    assert not (data / "hhvaem.db").exists() and not (data / "batch").exists()
    assert (models / "diabetes" / "manifest.json").exists()  # the artifact is the user's: never deleted
    assert "registry:    empty" in runner.invoke(app, ["info"]).output
    assert "nothing to reset" in runner.invoke(app, ["reset", "--yes"]).output


def test_reset_refuses_a_database_that_is_not_a_sqlite_file(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HHVAEM_DATABASE_URL", "postgresql://hhvaem:s3cret@127.0.0.1:5432/hhvaem")
    res = runner.invoke(app, ["reset", "--yes"])
    assert res.exit_code == 2
    assert "postgresql://hhvaem:***@127.0.0.1:5432/hhvaem, not a SQLite file" in res.output
    assert "s3cret" not in res.output
