"""Loaded models: the SQL registry says which artifact versions exist and which is active; engines are
loaded from those directories (checksums verified) and kept per (name, version)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from hhvaem.app.db import repository as repo
from hhvaem.app.db.database import Database
from hhvaem.app.db.models import ModelRecord
from hhvaem.app.engine import Engine
from hhvaem.model.io.artifact import ArtifactError, manifest_checksum, read_manifest

log = logging.getLogger(__name__)


class ModelNotFound(LookupError):
    def __init__(self, name: str, version: int | None = None):
        self.name, self.version = name, version
        what = f"model {name!r}" + (f" version {version}" if version is not None else "")
        super().__init__(f"{what} is not registered" + ("" if version is not None else " or has no active version"))


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: int
    engine: Engine


def artifact_summary(manifest: dict) -> dict:
    schema = manifest["schema"]
    return {
        "targets": [c["name"] for c in schema.get("targets", [])],
        "n_features": len(schema.get("features", [])),
        "variant": manifest.get("architecture", {}).get("variant"),
    }


class ModelRegistry:
    def __init__(self, database: Database, backend: str = "onnx", device: str = "auto", threads: int = 0):
        self.database = database
        self.backend, self.device, self.threads = backend, device, threads
        self._engines: dict[tuple[str, int], Engine] = {}
        self._lock = threading.Lock()

    def register(self, path: str | Path, name: str | None = None, activate: bool = True) -> tuple[ModelRecord, bool]:
        """Registers an artifact directory (verified first); returns (record, created)."""
        path = Path(path).resolve()
        manifest = read_manifest(path)
        engine = Engine(path, self.backend, self.device, self.threads)  # refuses a graph it cannot run
        name = name or engine.name
        with self.database.transaction() as tx:
            record, created = repo.ensure_model(
                tx,
                name,
                str(path),
                manifest_checksum(path),
                str(manifest["format_version"]),
                manifest.get("metrics") or {},
                artifact_summary(manifest),
                activate=activate,
            )
            if activate and not record.active:
                record = repo.activate_model(tx, name, record.version)
        with self._lock:
            self._engines[(name, record.version)] = engine
        log.info("model %s version %d %s from %s", name, record.version, "registered" if created else "known", path)
        return record, created

    def register_dir(self, models_dir: Path) -> list[ModelRecord]:
        """Registers every artifact subfolder of `models_dir`; a broken one is logged and skipped."""
        records = []
        for sub in sorted(p for p in Path(models_dir).iterdir() if p.is_dir()):
            try:
                records.append(self.register(sub)[0])
            except ArtifactError as e:
                log.error("skipping %s: %s", sub, e)
        return records

    def resolve(self, name: str, version: int | None = None) -> LoadedModel:
        """The engine of `name` at `version` (None: the active one), loaded on first use."""
        with self.database.read() as tx:
            record = repo.get_model(tx, name, version)
            if record is None:
                raise ModelNotFound(name, version)
            key, path = (record.name, record.version), record.path
        with self._lock:
            engine = self._engines.get(key)
        if engine is None:
            engine = Engine(path, self.backend, self.device, self.threads)
            if engine.checksum != record.checksum:
                raise ArtifactError(f"{path}: manifest changed since registration (checksum differs)")
            with self._lock:
                engine = self._engines.setdefault(key, engine)
        return LoadedModel(key[0], key[1], engine)

    def records(self) -> list[ModelRecord]:
        with self.database.read() as tx:
            return repo.list_models(tx)

    def loaded(self) -> list[tuple[str, int]]:
        with self._lock:
            return sorted(self._engines)
