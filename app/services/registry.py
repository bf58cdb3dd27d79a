"""Loaded models: the database says which artifact versions exist and which is active; this process keeps a view of
that, the engines it loaded from those directories, and which of them no longer match what was registered.

The view, not the database, answers every request (`resolve`), so inference goes on through a database outage.
`refresh()` re-reads the registry and re-checks the active artifacts; `start()` runs it every
`registry_refresh_seconds` in a background thread, which is how a registration or activation made by another
process reaches this one (within that delay; one made here is in the view at once). When the database cannot be
read the view stays as it was, and `refresh_error` says why.

Integrity: a version is served only while its artifact is what was registered (`verify_artifact`: the manifest
hashes to the recorded checksum and every file to what the manifest lists). Each refresh re-checks the loaded
artifacts whose files changed on disk (cheap `stat`, hashing only on a change); a mismatch marks the version broken,
so every route answers 503 for it and `/readyz` names it, in every process within one refresh, and it serves again
once the files are restored. A version that cannot be loaded is broken the same way.

Registration validates the whole artifact: the manifest's shape and name, every checksum, and one tiny run of each
question through the graphs (`smoke_test`), so a manifest that disagrees with its graphs (e.g. `hmc_steps`) is
refused then, not at every inference afterwards. Under a name that has an active version, the artifact's schema must
serve that version's clients (`compatibility.schema_changes`), unless forced.

Retirement: an admin retires a version (`retire`) that is not the active one; it is never served (`resolve` raises
`VersionRetired`) nor activated again, here at once and in the other processes at their next refresh, and a start
on a models folder that still holds its artifact does not bring it back.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hhvaem.app.db import repository as repo
from hhvaem.app.db.availability import DatabaseUnavailable
from hhvaem.app.db.database import Database
from hhvaem.app.engine import Engine
from hhvaem.app.services.compatibility import schema_changes
from hhvaem.model.io.artifact import ArtifactError, file_stats, manifest_checksum, name_problem, read_manifest

log = logging.getLogger(__name__)


class ModelNotFound(LookupError):
    def __init__(self, name: str, version: int | None = None):
        self.name, self.version = name, version
        what = f"model {name!r}" + (f" version {version}" if version is not None else "")
        super().__init__(f"{what} is not registered" + ("" if version is not None else " or has no active version"))


class VersionRetired(ModelNotFound):
    """The version was retired by an admin: it is never served again."""

    def __init__(self, record: Registered):
        self.name, self.version = record.name, record.version
        self.retired_at, self.reason = record.retired_at, record.retired_reason
        LookupError.__init__(self, f"model {record.name!r} version {record.version} was {record.retirement}")


class IncompatibleSchema(ArtifactError):
    """The artifact's schema would break the clients of the name's active version (`changes` says how)."""

    def __init__(self, path: Path, name: str, version: int, changes: list[str]):
        self.changes = changes
        super().__init__(f"{path}: its schema differs from {name!r} version {version}'s: " + "; ".join(changes))


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: int
    engine: Engine


@dataclass(frozen=True)
class Registered:
    """One registry row as this process last read it."""

    name: str
    version: int
    path: str
    checksum: str
    format_version: str
    active: bool
    created_at: dt.datetime | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    retired_at: dt.datetime | None = None
    retired_reason: str | None = None

    @classmethod
    def of(cls, r: Any) -> Registered:
        return cls(
            r.name,
            r.version,
            r.path,
            r.checksum,
            r.format_version,
            bool(r.active),
            r.created_at,
            dict(r.summary or {}),
            dict(r.metrics or {}),
            r.retired_at,
            r.retired_reason,
        )

    @property
    def key(self) -> tuple[str, int]:
        return self.name, self.version

    @property
    def retired(self) -> bool:
        return self.retired_at is not None

    @property
    def retirement(self) -> str:
        """E.g. "retired 2026-03-01T12:00:00+00:00 (superseded by v3)"."""
        when = self.retired_at.isoformat(timespec="seconds") if self.retired_at else "?"
        return f"retired {when} ({self.retired_reason or 'no reason given'})"


@dataclass(frozen=True)
class Registration:
    record: Registered
    created: bool
    # What in the artifact's schema breaks the clients of the name's active version: accepted with `force` (or at
    # a start, where it is logged); empty when compatible.
    schema_changes: tuple[str, ...] = ()


def artifact_summary(manifest: dict) -> dict:
    schema = manifest["schema"]
    return {
        "targets": [c["name"] for c in schema.get("targets", [])],
        "n_features": len(schema.get("features", [])),
        "variant": (manifest.get("architecture") or {}).get("variant"),
    }


def _example_value(engine: Engine, column: Any) -> Any:
    """A value of `column` the model accepts: its first category, or the centre of its training data."""
    if column.is_discrete:
        return engine.preprocessor.category(column, 0)
    return column.family.to_json(float(engine.preprocessor.to_original(column, np.zeros(1))[0]))


def smoke_test(engine: Engine) -> None:
    """One row, two samples, through every question (and so every graph): raises ArtifactError when the graphs do
    not run with what the manifest says about them."""
    from hhvaem.app.engine import ImputeQuery, NextFeaturesQuery, PredictQuery

    target = engine.schema.targets[0] if engine.schema.targets else None
    queries = [ImputeQuery([{}], 2, seed=0), NextFeaturesQuery({}, samples=2, seed=0, top_k=1)]
    if target is not None:  # the target: predicted from nothing, and known (the conditional graph)
        queries.append(PredictQuery([{}], 2, seed=0))
        queries.append(ImputeQuery([{target.name: _example_value(engine, target)}], 2, seed=0))
    for query in queries:
        try:
            engine.answer(query)
        except Exception as e:  # noqa: BLE001 - whatever fails, the artifact is unusable: say so in one line
            text = " ".join(str(e).split())[:300] or type(e).__name__
            raise ArtifactError(
                f"{engine.path}: the graphs do not run with this manifest ({type(query).__name__}: {text})"
            ) from None


class ModelRegistry:
    def __init__(
        self,
        database: Database,
        backend: str = "onnx",
        device: str = "auto",
        threads: int = 0,
        refresh_seconds: float = 5.0,
    ):
        self.database = database
        self.backend, self.device, self.threads = backend, device, threads
        self.refresh_seconds = refresh_seconds
        self._rows: dict[tuple[str, int], Registered] = {}
        self._engines: dict[tuple[str, int], Engine] = {}
        self._stats: dict[tuple[str, int], tuple] = {}  # file_stats when last verified
        self._broken: dict[tuple[str, int], str] = {}
        self._lock = threading.RLock()
        self._loading: dict[tuple[str, int], threading.Lock] = {}
        self.refresh_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- registering ---------------------------------------------------------------------------------------
    def register(
        self,
        path: str | Path,
        name: str | None = None,
        activate: bool = True,
        *,
        at_start: bool = False,
        force: bool = False,
    ) -> Registration:
        """Registers an artifact directory (verified and test-run first).

        `activate` makes the version active. `at_start` (a process starting on its models folder) activates an
        artifact only when it is new or no version of the name is active: an activation an admin made since (or a
        newer version that superseded this one) survives restarts and new replicas. IncompatibleSchema when the
        artifact would break the clients of the name's active version, unless `force` (or `at_start`: the folder is
        the deployment; logged); VersionRetired when it is a retired version (at a start: it stays retired)."""
        path = Path(path).resolve()
        manifest = read_manifest(path, require_graphs=True)
        checksum = manifest_checksum(path)
        name = name or str(manifest.get("name") or path.name)
        if name_problem(name):
            raise ArtifactError(f"{path}: name {name[:60]!r} is not usable: {name_problem(name)}")
        active, known = self._registered(name, checksum)
        if known is not None and known.retired:  # found before loading it: a retired artifact costs nothing
            if not at_start:
                raise VersionRetired(known)
            log.info("model %s version %d %s, not served: %s", name, known.version, known.retirement, path)
            return Registration(known, False)
        changes = [] if active is None else schema_changes(active[1], manifest["schema"])
        if changes and not (force or at_start):
            raise IncompatibleSchema(path, name, active[0], changes)  # before loading: the cheap refusal first
        engine = self._build(path, checksum)
        with self.database.transaction() as tx:
            record, created = repo.ensure_model(
                tx,
                name,
                str(path),
                checksum,
                str(manifest["format_version"]),
                manifest.get("metrics") or {},
                artifact_summary(manifest),
                activate=activate,
            )
            if record.retired:  # retired by another process meanwhile
                raise VersionRetired(Registered.of(record))
            if activate and not record.active and not at_start:
                record = repo.activate_model(tx, name, record.version)
            rows = repo.list_models(tx, name)
        with self._lock:
            self._replace(name, [Registered.of(r) for r in rows])
            self._keep(Registered.of(record).key, engine)
        if changes and (created or not at_start):  # a start that changes nothing warns at every restart otherwise
            what = "; ".join(changes)
            log.warning(
                "model %s version %d breaks the clients of version %d: %s", name, record.version, active[0], what
            )
        log.info("model %s version %d %s from %s", name, record.version, "registered" if created else "known", path)
        return Registration(Registered.of(record), created, tuple(changes))

    def register_dir(self, models_dir: Path) -> list[Registered]:
        """Registers every artifact subfolder of `models_dir`; a broken one is logged and skipped, a hidden one (e.g.
        the demo's `.training-*` folder, a model being written) is left alone."""
        records = []
        for sub in sorted(p for p in Path(models_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                records.append(self.register(sub, at_start=True).record)
            except ArtifactError as e:
                log.error("skipping %s: %s", sub, e)
            except VersionRetired as e:  # retired by another process while this one started
                log.info("skipping %s: %s", sub, e)
        return records

    def activate(self, name: str, version: int) -> Registered | None:
        """Makes `version` the active one (None when there is no such version; repo.StateConflict when it was
        retired)."""
        with self.database.transaction() as tx:
            if repo.get_model(tx, name, version) is None:
                return None
            repo.activate_model(tx, name, version)
            rows = repo.list_models(tx, name)
        with self._lock:
            self._replace(name, [Registered.of(r) for r in rows])
            return self._rows[(name, version)]

    def retire(self, name: str, version: int, reason: str | None = None) -> Registered | None:
        """Retires `version` (None when there is no such version; repo.StateConflict when it is the active one):
        here at once, elsewhere at the next refresh. Retiring it again changes nothing."""
        with self.database.transaction() as tx:
            try:
                record = repo.retire_model(tx, name, version, reason)
            except repo.NotFoundError:
                return None
            rows = repo.list_models(tx, name)
        with self._lock:
            self._replace(name, [Registered.of(r) for r in rows])
            self._forget(record.name, record.version)
            return self._rows[(name, version)]

    def _registered(self, name: str, checksum: str) -> tuple[tuple[int, dict] | None, Registered | None]:
        """What the database says before a registration: `name`'s active version and its schema (`_schema_of`; None
        when there is none), and the version already registered with this checksum, if any."""
        with self.database.read() as tx:
            rows = [repo.get_model(tx, name), repo.find_model_by_checksum(tx, name, checksum)]
            active, known = (None if r is None else Registered.of(r) for r in rows)
        return (None if active is None else self._schema_of(active)), known

    def _schema_of(self, active: Registered) -> tuple[int, dict] | None:
        """(version, schema) of a version, from its loaded engine or else its manifest; None when that cannot be read
        (a broken version: then nothing can be compared, which is logged)."""
        name = active.name
        with self._lock:
            engine = self._engines.get(active.key)
        try:
            manifest = engine.manifest if engine is not None else read_manifest(active.path, checksum=active.checksum)
        except (ArtifactError, OSError) as e:
            log.warning(
                "model %s version %d: schema not compared, its manifest is unreadable: %s", name, active.version, e
            )
            return None
        return active.version, manifest["schema"]

    def _build(self, path: Path, checksum: str) -> Engine:
        """An engine for the artifact at `path`, which must be the registered one (`checksum`), test-run."""
        read_manifest(path, require_graphs=True, checksum=checksum)  # says what differs from the registration
        try:
            engine = Engine(path, self.backend, self.device, self.threads)
        except ArtifactError:
            raise
        except Exception as e:  # noqa: BLE001 - a manifest that passed the shape check but not the engine
            text = " ".join(str(e).split())[:300]
            raise ArtifactError(f"{path}: cannot be loaded ({type(e).__name__}: {text})") from None
        if engine.checksum != checksum:
            raise ArtifactError(f"{path}: manifest.json changed since registration (its checksum differs)")
        smoke_test(engine)
        return engine

    def _keep(self, key: tuple[str, int], engine: Engine) -> None:
        self._engines[key] = engine
        self._stats[key] = file_stats(engine.path, engine.manifest)
        self._broken.pop(key, None)

    def _forget(self, name: str, version: int) -> None:
        """Drops a retired version's engine (its memory); requests already holding it finish."""
        for held in (self._engines, self._stats, self._broken):
            held.pop((name, version), None)

    def _replace(self, name: str | None, rows: list[Registered]) -> None:
        """The view's rows for `name` (None: every name) become `rows`."""
        for key in [k for k in self._rows if name is None or k[0] == name]:
            del self._rows[key]
        self._rows.update({r.key: r for r in rows})

    # ---- serving ---------------------------------------------------------------------------------------------
    def resolve(self, name: str, version: int | None = None) -> LoadedModel:
        """The engine of `name` at `version` (None: the active one), loaded on first use; ArtifactError when the
        version is broken. Reads only this process's view (never the database)."""
        with self._lock:
            record = self._find(name, version)
            reason = self._broken.get(record.key)
            engine = self._engines.get(record.key)
        if reason is not None:
            raise ArtifactError(reason)
        if engine is None:
            engine = self._load(record)
        return LoadedModel(record.name, record.version, engine)

    def _find(self, name: str, version: int | None) -> Registered:
        if not isinstance(name, str) or name_problem(name):
            raise ModelNotFound(name, version)
        if version is None:
            record = next((r for r in self._rows.values() if r.name == name and r.active), None)
        else:
            record = self._rows.get((name, version))
        if record is None:
            raise ModelNotFound(name, version)
        if record.retired:
            raise VersionRetired(record)
        return record

    def _load(self, record: Registered) -> Engine:
        with self._lock:
            gate = self._loading.setdefault(record.key, threading.Lock())
        with gate:  # one load per version at a time; the others wait for it
            with self._lock:
                if record.key in self._engines:
                    return self._engines[record.key]
            try:
                engine = self._build(Path(record.path), record.checksum)
            except ArtifactError as e:
                with self._lock:
                    self._broken[record.key] = str(e)
                log.error("model %s version %d is broken: %s", record.name, record.version, e)
                raise
            with self._lock:
                self._keep(record.key, engine)
            return engine

    def records(self) -> list[Registered]:
        with self._lock:
            return [self._rows[k] for k in sorted(self._rows)]

    def loaded(self) -> list[tuple[str, int]]:
        with self._lock:
            return sorted(k for k in self._engines if k not in self._broken)

    def health(self) -> dict[str, str]:
        """For each active version, "name vN": "ok", "not loaded" or why it is broken."""
        with self._lock:
            out = {}
            for r in sorted((r for r in self._rows.values() if r.active), key=lambda r: r.key):
                label = f"{r.name} v{r.version}"
                if r.key in self._broken:
                    out[label] = f"broken: {self._broken[r.key]}"
                else:
                    out[label] = "ok" if r.key in self._engines else "not loaded"
            return out

    def retired(self) -> dict[str, str]:
        """For each retired version, "name vN": "retired <when> (<reason>)": never served, and not a fault."""
        with self._lock:
            retired = sorted((r for r in self._rows.values() if r.retired), key=lambda r: r.key)
            return {f"{r.name} v{r.version}": r.retirement for r in retired}

    # ---- refreshing ------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-reads the registry into the view, then loads every active version not loaded yet and re-verifies
        the loaded ones whose files changed. Raises DatabaseUnavailable (after noting it) when the database cannot
        be read; the view is then left as it was."""
        try:
            self.database.probe()
            with self.database.read() as tx:
                rows = [Registered.of(r) for r in repo.list_models(tx)]
        except DatabaseUnavailable as e:
            self.refresh_error = e.reason
            raise
        self.refresh_error = None
        with self._lock:
            self._replace(None, rows)
            for record in rows:
                if record.retired:  # retired by another process since the last refresh
                    self._forget(record.name, record.version)
            active = [r for r in rows if r.active]
            loaded = [(r, self._engines[r.key]) for r in self._rows.values() if r.key in self._engines]
        for record, engine in loaded:
            self._recheck(record, engine)
        for record in active:
            if record.key not in self._engines:
                try:
                    self._load(record)
                except ArtifactError:
                    pass  # noted as broken; retried at the next refresh

    def _recheck(self, record: Registered, engine: Engine) -> None:
        stats = file_stats(record.path, engine.manifest)
        with self._lock:
            unchanged = self._stats.get(record.key) == stats and record.key not in self._broken
        if unchanged:
            return
        try:
            read_manifest(record.path, require_graphs=True, checksum=record.checksum)
        except (ArtifactError, OSError) as e:
            with self._lock:
                was = self._broken.get(record.key)
                self._broken[record.key] = str(e)
            if was is None:
                log.error("model %s version %d is broken: %s", record.name, record.version, e)
            return
        with self._lock:
            self._stats[record.key] = stats
            if self._broken.pop(record.key, None) is not None:
                log.info("model %s version %d matches its registration again", record.name, record.version)

    def start(self) -> None:
        """Refreshes every `refresh_seconds` in a background thread until `stop()`."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(self.refresh_seconds):
                try:
                    self.refresh()
                except DatabaseUnavailable as e:
                    log.warning("registry not refreshed: %s", e.reason)
                except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                    log.exception("registry refresh failed")

        self._thread = threading.Thread(target=loop, name="registry-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
