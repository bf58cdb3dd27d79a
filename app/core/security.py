"""API-key primitives: generation, hashing, constant-time verification and scopes.

Pure functions, and the log filter that keeps keys out of logs; the FastAPI dependency that reads the header and
answers 401/403 lives with the routes.

A key looks like ``hhv_<43 urlsafe base64 chars>`` (32 random bytes). The database keeps
``prefix`` (the first :data:`PREFIX_LENGTH` characters of the random part, for lookup and display) and
``key_hash`` (SHA-256 hex of the whole key), never the key itself.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Iterable

KEY_MARKER = "hhv_"
"""Every key starts with this, so a leaked key is recognisable (secret scanners, logs)."""

KEY_BYTES = 32
"""Random bytes per key (256 bits)."""

PREFIX_LENGTH = 8
"""Characters of the random part stored in clear for lookup and display."""

INFER = "infer"
ADMIN = "admin"
ALL_SCOPES: frozenset[str] = frozenset({INFER, ADMIN})

# A scope implies the scopes listed here (admin can do everything infer can).
_IMPLIED: dict[str, frozenset[str]] = {ADMIN: frozenset({INFER}), INFER: frozenset()}


def generate_api_key() -> str:
    """A fresh key: ``hhv_`` + 32 random bytes as urlsafe base64 (no padding)."""
    return KEY_MARKER + secrets.token_urlsafe(KEY_BYTES)


def hash_api_key(key: str) -> str:
    """SHA-256 hex digest of the whole key.

    A fast, unsalted hash is right here, unlike for passwords: the key carries 256 bits of randomness, so
    there is no dictionary to try and brute force is hopeless whatever the hash costs. A slow KDF (bcrypt,
    argon2) would only add latency to every authenticated request. Without a salt the hash is deterministic,
    which also lets the table hold a unique index on it.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_prefix(key: str) -> str:
    """The clear-text lookup/display prefix: the first characters of the random part (after ``hhv_``)."""
    body = key[len(KEY_MARKER) :] if key.startswith(KEY_MARKER) else key
    return body[:PREFIX_LENGTH]


def display_key(prefix: str) -> str:
    """How a stored key is shown to people: ``hhv_ab12CD34…``."""
    return f"{KEY_MARKER}{prefix}\u2026"


def looks_like_api_key(key: str) -> bool:
    """Cheap shape check before touching the database (marker and enough random characters)."""
    return key.startswith(KEY_MARKER) and len(key) > len(KEY_MARKER) + PREFIX_LENGTH


def verify_key_hash(key: str, expected_hash: str) -> bool:
    """Whether ``key`` hashes to ``expected_hash``, compared in constant time."""
    return hmac.compare_digest(hash_api_key(key), expected_hash)


def normalize_scopes(scopes: Iterable[str]) -> list[str]:
    """Validated, de-duplicated, sorted scope list; raises ``ValueError`` naming an unknown scope."""
    if isinstance(scopes, str):
        scopes = [scopes]
    result = set()
    for scope in scopes:
        if scope not in ALL_SCOPES:
            raise ValueError(f"unknown scope {scope!r}; expected one of {sorted(ALL_SCOPES)}")
        result.add(scope)
    if not result:
        raise ValueError("an API key needs at least one scope")
    return sorted(result)


def expand_scopes(granted: Iterable[str]) -> frozenset[str]:
    """Granted scopes plus everything they imply; unknown scopes are ignored (they grant nothing)."""
    out: set[str] = set()
    for scope in granted:
        if scope in _IMPLIED:
            out.add(scope)
            out |= _IMPLIED[scope]
    return frozenset(out)


def check_scopes(granted: Iterable[str], required: str | Iterable[str]) -> bool:
    """True when ``granted`` covers every scope in ``required`` (``admin`` implies ``infer``).

    ``required`` may be one scope or several; an empty requirement is always satisfied.
    """
    needed = {required} if isinstance(required, str) else set(required)
    if isinstance(granted, str):
        granted = [granted]
    return needed <= expand_scopes(granted)


# ------------------------------------------------------------------------------------------------ log redaction

_KEY_TEXT = re.compile(re.escape(KEY_MARKER) + r"[A-Za-z0-9_\-]+")
_CREDENTIAL_PARAMETER = re.compile(r"(?i)([?&;](?:api[_-]?key|key|token|access[_-]?token|password|secret)=)[^&;\s\"]*")


def redact(text: str) -> str:
    """`text` with anything that looks like an API key, and the value of any credential-like query parameter,
    replaced by `***`."""
    return _CREDENTIAL_PARAMETER.sub(r"\1***", _KEY_TEXT.sub(KEY_MARKER + "***", text))


class RedactCredentials(logging.Filter):
    """A logging filter that redacts credentials from a record's message and arguments (the access log writes each
    request's path with its query string: `?api_key=...` must not reach the log, whatever the route)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


REDACTED_LOGGERS = ("uvicorn.access", "uvicorn.error", "hhvaem")


def install_log_redaction() -> None:
    """Adds `RedactCredentials` to the loggers that may see a request line (idempotent)."""
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactCredentials) for f in logger.filters):
            logger.addFilter(RedactCredentials())
