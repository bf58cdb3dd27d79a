"""Service configuration: one pydantic-settings class, read from `HHVAEM_*` environment variables.

Every field carries a `description`; `configuration_table()` renders them as the README's configuration table, so
the documentation cannot drift from the code.

`data_dir` defaults to the XDG data directory (`$XDG_DATA_HOME/hhvaem`, else `~/.local/share/hhvaem`) rather than a
path relative to the working directory: the default SQLite registry then stays the same whichever directory
`hhvaem serve` is started from, instead of silently creating a fresh, empty registry elsewhere. Containers set
`HHVAEM_DATA_DIR` explicitly (the Dockerfile uses `/var/lib/hhvaem`).

`hhvaem demo` keeps a data folder of its own (`Settings.for_demo`: `<data_dir>/demo`, its own SQLite registry), so
what the demo registers never shows up in the user's `hhvaem serve`, nor the user's models in the demo.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from hhvaem.model.io.contract import CHUNK_ROWS

__all__ = ["Settings", "configuration_table", "get_settings", "make_settings", "redact_url", "sqlite_url"]

ENV_PREFIX = "HHVAEM_"
MiB = 1024 * 1024
SQLITE_FILE = "hhvaem.db"  # the default database, in the data folder
DEMO_FOLDER = "demo"  # the demo's own data folder, in the data folder


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/hhvaem`, else `~/.local/share/hhvaem`."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "hhvaem"


def sqlite_url(data_dir: Path) -> str:
    """The default database of a data folder: the SQLite file `hhvaem.db` in it."""
    return f"sqlite:///{(data_dir / SQLITE_FILE).as_posix()}"


def redact_url(url: str | None) -> str | None:
    """The URL with any password replaced by `***` (safe for logs and error messages)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        netloc = f"{user}:***@{host}" if user else f":***@{host}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        return "<unparseable URL>"


class Settings(BaseSettings):
    """Everything the service reads from its environment. Env var = `HHVAEM_` + field name in upper case."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
    )

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description=(
            "Directory for the service's own files (the default SQLite database, batch job inputs and results). "
            "Default: `$XDG_DATA_HOME/hhvaem` or `~/.local/share/hhvaem`, independent of the working directory."
        ),
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("HHVAEM_DATABASE_URL", "DATABASE_URL"),
        description=(
            "SQLAlchemy URL of the registry / audit / batch-job database, e.g. "
            "`postgresql+psycopg://user:pass@host:5432/hhvaem`. Default: SQLite file `hhvaem.db` in `data_dir`. "
            "The plain `DATABASE_URL` variable is accepted too."
        ),
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("HHVAEM_REDIS_URL", "REDIS_URL"),
        description=(
            "Redis URL for questionnaire sessions, e.g. `redis://localhost:6379/0`. Unset: an in-process session "
            "store (single process only; the service says so at start-up). The plain `REDIS_URL` variable is "
            "accepted too."
        ),
    )
    models_dir: Path | None = Field(
        default=None,
        description="Directory with one exported model artifact per subfolder, registered at start-up.",
    )
    session_ttl_seconds: int = Field(
        default=1800, gt=0, description="Idle time-to-live of a session, in seconds; every read or update renews it."
    )
    session_max_observations: int = Field(
        default=1000,
        gt=0,
        le=100_000,
        description="Most answers (corrections and retractions included) one session keeps; beyond it an update is "
        "refused with 409 and the client starts a new session. Bounds what every read of a session costs.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="Where inference runs: `cpu`, `cuda`, or `auto` (CUDA when ONNX Runtime offers it, else CPU).",
    )
    threads: int = Field(
        default=1,
        ge=0,
        description=(
            "ONNX Runtime intra-op threads per sampler call (0: the library's default). One is fastest for the "
            "sampler's many small matrix products; the cores are used by `inference_workers` instead."
        ),
    )
    inference_workers: int = Field(
        default=0,
        ge=0,
        description="Sampler calls that may run at once, each on its own thread (0: one per CPU core).",
    )
    auth_enabled: bool = Field(
        default=False, description="Require an API key on the `/v1` routes (keys are stored hashed in the database)."
    )
    max_rows: int = Field(default=1000, gt=0, description="Most rows accepted in one impute/predict request.")
    max_body_bytes: int = Field(
        default=2 * MiB, gt=0, description="Largest JSON request body, in bytes (larger bodies get 413)."
    )
    max_upload_bytes: int = Field(
        default=64 * MiB, gt=0, description="Largest batch-job upload (CSV or Parquet), in bytes (larger get 413)."
    )
    max_samples: int = Field(default=1000, gt=0, description="Most posterior samples a request may ask for.")
    default_samples: int = Field(
        default=100, gt=0, description="Posterior samples drawn when a request does not say (at most `max_samples`)."
    )
    batch_window_ms: float = Field(
        default=0.0,
        ge=0.0,
        description=(
            "Dynamic batching window, in milliseconds: how long a free inference worker waits for more requests "
            "before it runs what is queued. 0 (the default): it never waits; requests that arrive while every "
            "worker is busy queue up and share the next call, so batches still grow under load "
            "(docs/performance.md measures both)."
        ),
    )
    max_batch_rows: int = Field(default=256, gt=0, description="Most rows in one dynamically batched inference call.")
    max_work: int = Field(
        default=100_000,
        gt=0,
        description=(
            "Most work in one request: rows x samples for impute/predict, samples x candidates for next-features "
            "(time and memory grow with it; docs/reliability.md has measured figures); larger requests get 422 "
            "naming the factors. Bigger tables go to batch jobs."
        ),
    )
    max_table_bytes: int = Field(
        default=256 * MiB, gt=0, description="Largest batch-job table once decompressed (.csv.gz, Parquet), in bytes."
    )
    max_job_rows: int = Field(default=1_000_000, gt=0, description="Most data rows in one batch job.")
    batch_retention_seconds: int = Field(
        default=7 * 24 * 3600,
        gt=0,
        description=(
            "How long a finished batch job and its result are kept (then both are deleted); inputs are deleted as "
            "soon as the job ends."
        ),
    )
    batch_lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "A running batch job is leased to one service process, renewed while it runs; a job whose lease ran "
            "out (its process died) is resumed by any process from the rows already scored."
        ),
    )
    batch_slice_seconds: float = Field(
        default=30.0,
        ge=0,
        description=(
            "Per-key fairness of the batch queue: a job that has been scored this long since it was taken hands "
            "its place back (between two chunks, nothing lost) when another key's job is waiting; jobs are taken "
            "in the order they joined the queue, so keys take turns."
        ),
    )
    batch_drain_seconds: float = Field(
        default=10.0,
        ge=0,
        description="At shutdown, how long running batch jobs may take to checkpoint the chunk they are scoring.",
    )
    database_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description=(
            "Longest wait for the database (connecting, each statement, a pooled connection); beyond it the "
            "request gets 503. After a failure, requests needing the database get 503 at once until it answers."
        ),
    )
    registry_refresh_seconds: float = Field(
        default=5.0,
        gt=0,
        description=(
            "How often each process re-reads the model registry (registrations and activations made elsewhere "
            "show up within this delay) and re-checks the active artifacts' files."
        ),
    )
    ray_address: str | None = Field(
        default=None,
        description=(
            "Score batch jobs on a Ray cluster: `ray://host:10001` (Ray Client, from outside the cluster's nodes), or "
            "`auto` / `host:6379` where this machine is a node (`local`: one started in this process). Unset: in the "
            "service's own process. The cluster must see `data_dir` and the models at "
            "the same paths (a shared volume) and have this version of hhvaem installed (docs/scaling.md)."
        ),
    )
    ray_partition_rows: int = Field(
        default=4096,
        gt=0,
        description="Rows per partition of a batch job scored on Ray (a multiple of 128, the rows per sampler call).",
    )
    api_key_cache_seconds: float = Field(
        default=60.0,
        ge=0,
        description=(
            "How long a verified API key is trusted without asking the database again (a revocation takes effect "
            "within this delay; while the database is unreachable, keys verified in the last hour keep working)."
        ),
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Origins allowed to call the API from a browser: comma-separated or a JSON list, `*` for any. "
            "Default: none (no CORS headers)."
        ),
    )
    audit_values: bool = Field(
        default=False,
        description="Store the raw feature values in audit events (default: only which features, never values).",
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description=(
            "A request's headers must arrive within this long of the connection opening (or of the previous "
            "response on it); otherwise the connection is closed (slowloris)."
        ),
    )
    body_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "A request's body must arrive within this long plus one second per `body_min_rate` bytes received; "
            "otherwise the connection is closed (a trickled body). Suspended while the service is not reading."
        ),
    )
    body_min_rate: float = Field(
        default=1024.0, gt=0, description="Bytes per second a request body must average past `body_timeout_seconds`."
    )
    keep_alive_seconds: int = Field(
        default=5, ge=1, description="How long an idle keep-alive connection stays open between two requests."
    )
    max_result_bytes: int = Field(
        default=1024 * MiB,
        gt=0,
        description=(
            "Largest result file of one batch job: a job whose result, projected from the rows scored so far, "
            "would be larger fails with the projection and the limit (results are kept for "
            "`batch_retention_seconds`)."
        ),
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="Log level of the service's loggers (case-insensitive)."
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return []
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("log_level", "device", mode="before")
    @classmethod
    def _normalise_case(cls, value: Any, info: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            return value.upper() if info.field_name == "log_level" else value.lower()
        return value

    @field_validator("redis_url", "database_url", "ray_address", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("data_dir", "models_dir", mode="after")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        if self.database_url is None:
            self.database_url = sqlite_url(self.data_dir)
        if self.default_samples > self.max_samples:
            raise ValueError(
                f"default_samples ({self.default_samples}) must not exceed max_samples ({self.max_samples})"
            )
        if self.ray_partition_rows % CHUNK_ROWS:
            raise ValueError(f"ray_partition_rows ({self.ray_partition_rows}) must be a multiple of {CHUNK_ROWS}")
        return self

    @property
    def sqlite_path(self) -> Path | None:
        """The database file when `database_url` is a SQLite file URL, else None."""
        url = self.database_url or ""
        if url.startswith("sqlite") and ":///" in url:
            path = url.split(":///", 1)[1].split("?", 1)[0]
            return Path(path) if path and path != ":memory:" else None
        return None

    def for_demo(self, folder: Path | None = None) -> Settings:
        """The demo's settings: these, with the data folder `folder` (default `<data_dir>/demo`), which also holds
        the demo model (the models folder) and its own SQLite registry, whatever `database_url` says: the demo
        never registers into the user's database, nor serves the user's models."""
        folder = (folder or self.data_dir / DEMO_FOLDER).expanduser()
        return self.model_copy(update={"data_dir": folder, "models_dir": folder, "database_url": sqlite_url(folder)})

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with passwords removed from URLs (for start-up logs)."""
        data = self.model_dump(mode="json")
        data["database_url"] = redact_url(self.database_url)
        data["redis_url"] = redact_url(self.redis_url)
        return data


class _ExplicitSettings(Settings):
    """Settings built from the given values and defaults only: no environment, no dotenv, no secrets dir."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def make_settings(*, use_env: bool = False, **values: Any) -> Settings:
    """Settings from explicit values (field names). With `use_env=False` (the default for tests) the process
    environment is ignored, so a developer's `HHVAEM_*` variables cannot leak into a test."""
    if use_env:
        return Settings(**values)
    return _ExplicitSettings(**values)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment (`get_settings.cache_clear()` re-reads)."""
    return Settings()


def env_var_names(name: str) -> list[str]:
    """The environment variables that set field `name`, preferred first."""
    field = Settings.model_fields[name]
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [c for c in alias.choices if isinstance(c, str) and c.isupper()]
    return [ENV_PREFIX + name.upper()]


def configuration_table() -> str:
    """A Markdown table of every setting: environment variable(s), default and description."""
    lines = ["| Variable | Default | Description |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        if name == "data_dir":
            default = "`~/.local/share/hhvaem`"
        elif name == "database_url":
            default = "`sqlite:///<data_dir>/hhvaem.db`"
        else:
            value = field.get_default(call_default_factory=True)
            default = "(unset)" if value is None or value == [] else f"`{value}`"
        names = ", ".join(f"`{n}`" for n in env_var_names(name))
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| {names} | {default} | {description} |")
    return "\n".join(lines) + "\n"
