"""Settings: env prefix, the plain REDIS_URL / DATABASE_URL aliases, defaults, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from hhvaem.app.core.config import Settings, configuration_table, get_settings, make_settings, redact_url

ENV_NAMES = [
    "REDIS_URL",
    "DATABASE_URL",
    *(f"HHVAEM_{name.upper()}" for name in Settings.model_fields),
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return monkeypatch


def test_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = Settings()
    assert s.data_dir == tmp_path / "xdg" / "hhvaem"
    assert s.database_url == f"sqlite:///{(tmp_path / 'xdg' / 'hhvaem' / 'hhvaem.db').as_posix()}"
    assert s.sqlite_path == tmp_path / "xdg" / "hhvaem" / "hhvaem.db"
    assert s.redis_url is None
    assert s.models_dir is None
    assert s.session_ttl_seconds == 1800
    assert s.device == "auto"
    assert s.auth_enabled is False
    assert s.max_rows == 1000
    assert s.max_body_bytes == 2 * 1024 * 1024
    assert s.max_upload_bytes == 64 * 1024 * 1024
    assert (s.max_samples, s.default_samples) == (1000, 100)
    assert s.batch_window_ms == 0.0
    assert s.max_batch_rows == 256
    assert s.cors_origins == []
    assert s.audit_values is False
    assert s.log_level == "INFO"
    assert s.threads == 1 and s.inference_workers == 0


def test_home_default_without_xdg(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.delenv("XDG_DATA_HOME")
    clean_env.setenv("HOME", str(tmp_path / "home"))
    assert Settings().data_dir == tmp_path / "home" / ".local" / "share" / "hhvaem"


def test_env_prefix(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("HHVAEM_DATA_DIR", str(tmp_path / "d"))
    clean_env.setenv("HHVAEM_SESSION_TTL_SECONDS", "60")
    clean_env.setenv("HHVAEM_DEVICE", "CUDA")
    clean_env.setenv("HHVAEM_AUTH_ENABLED", "true")
    clean_env.setenv("HHVAEM_MAX_ROWS", "10")
    clean_env.setenv("HHVAEM_MODELS_DIR", str(tmp_path / "models"))
    clean_env.setenv("HHVAEM_CORS_ORIGINS", "https://a.example, https://b.example")
    clean_env.setenv("HHVAEM_LOG_LEVEL", "debug")
    clean_env.setenv("HHVAEM_BATCH_WINDOW_MS", "0.5")
    clean_env.setenv("SESSION_TTL_SECONDS", "5")  # no prefix: ignored
    s = Settings()
    assert s.data_dir == tmp_path / "d"
    assert s.database_url == f"sqlite:///{(tmp_path / 'd' / 'hhvaem.db').as_posix()}"
    assert s.session_ttl_seconds == 60
    assert s.device == "cuda"
    assert s.auth_enabled is True
    assert s.max_rows == 10
    assert s.models_dir == tmp_path / "models"
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.log_level == "DEBUG"
    assert s.batch_window_ms == 0.5


def test_cors_json_list(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("HHVAEM_CORS_ORIGINS", '["*"]')
    assert Settings().cors_origins == ["*"]


def test_redis_url_alias(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("REDIS_URL", "redis://plain:6379/1")
    assert Settings().redis_url == "redis://plain:6379/1"
    clean_env.setenv("HHVAEM_REDIS_URL", "redis://prefixed:6379/2")
    assert Settings().redis_url == "redis://prefixed:6379/2"  # the prefixed name wins
    clean_env.setenv("HHVAEM_REDIS_URL", "")
    clean_env.delenv("REDIS_URL")
    assert Settings().redis_url is None  # blank means unset


def test_database_url_alias(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DATABASE_URL", "postgresql+psycopg://u:p@db/hhvaem")
    assert Settings().database_url == "postgresql+psycopg://u:p@db/hhvaem"
    assert Settings().sqlite_path is None
    clean_env.setenv("HHVAEM_DATABASE_URL", "sqlite:///x.db")
    assert Settings().database_url == "sqlite:///x.db"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HHVAEM_DEVICE", "tpu"),
        ("HHVAEM_SESSION_TTL_SECONDS", "0"),
        ("HHVAEM_MAX_ROWS", "-1"),
        ("HHVAEM_LOG_LEVEL", "loud"),
        ("HHVAEM_THREADS", "-2"),
        ("HHVAEM_AUTH_ENABLED", "perhaps"),
    ],
)
def test_invalid_values(clean_env: pytest.MonkeyPatch, name: str, value: str) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert name.removeprefix("HHVAEM_").lower() in str(info.value)


def test_invalid_device_explicit() -> None:
    with pytest.raises(ValidationError, match="device"):
        make_settings(device="gpu")


def test_default_samples_within_max() -> None:
    with pytest.raises(ValidationError, match="default_samples"):
        make_settings(max_samples=10, default_samples=50)


def test_make_settings_ignores_environment(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("REDIS_URL", "redis://from-env:6379/0")
    clean_env.setenv("HHVAEM_MAX_ROWS", "7")
    s = make_settings(data_dir=tmp_path, device="cpu")
    assert isinstance(s, Settings)
    assert s.redis_url is None and s.max_rows == 1000
    assert s.device == "cpu" and s.data_dir == tmp_path
    assert make_settings(redis_url="redis://x:1/0").redis_url == "redis://x:1/0"
    assert make_settings(use_env=True).max_rows == 7


def test_get_settings_is_cached(clean_env: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    try:
        clean_env.setenv("HHVAEM_MAX_ROWS", "11")
        first = get_settings()
        clean_env.setenv("HHVAEM_MAX_ROWS", "12")
        assert get_settings() is first and first.max_rows == 11
        get_settings.cache_clear()
        assert get_settings().max_rows == 12
    finally:
        get_settings.cache_clear()


def test_redaction() -> None:
    assert redact_url("redis://:s3cret@host:6380/0") == "redis://:***@host:6380/0"
    assert redact_url("postgresql+psycopg://u:pw@db:5432/x") == "postgresql+psycopg://u:***@db:5432/x"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"
    assert redact_url(None) is None
    s = make_settings(redis_url="redis://:s3cret@h:1/0", database_url="postgresql://u:pw@db/x")
    dumped = str(s.redacted())
    assert "s3cret" not in dumped and "pw@" not in dumped


def test_every_field_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description and len(field.description) > 10, name
    table = configuration_table()
    assert "`HHVAEM_REDIS_URL`, `REDIS_URL`" in table
    assert table.count("\n") == len(Settings.model_fields) + 2
