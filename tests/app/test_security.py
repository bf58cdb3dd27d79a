import hashlib

import pytest

from hhvaem.app.core import security
from hhvaem.app.core.security import ADMIN, INFER, check_scopes


def test_generated_keys_are_marked_random_and_long():
    keys = {security.generate_api_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert key.startswith("hhv_")
        assert len(key) >= len("hhv_") + 43  # 32 bytes of urlsafe base64
        assert security.looks_like_api_key(key)


def test_hash_is_sha256_hex_of_the_whole_key():
    key = security.generate_api_key()
    digest = security.hash_api_key(key)
    assert digest == hashlib.sha256(key.encode()).hexdigest()
    assert len(digest) == 64 and key not in digest


def test_prefix_is_taken_from_the_random_part():
    key = "hhv_ABCDEFGHijklmnop"
    assert security.key_prefix(key) == "ABCDEFGH"
    assert security.display_key("ABCDEFGH").startswith("hhv_ABCDEFGH")


def test_verify_key_hash():
    key = security.generate_api_key()
    stored = security.hash_api_key(key)
    assert security.verify_key_hash(key, stored)
    assert not security.verify_key_hash(key + "x", stored)
    assert not security.verify_key_hash(security.generate_api_key(), stored)


@pytest.mark.parametrize("bad", ["", "hhv_", "hhv_short", "sk_" + "a" * 40])
def test_shape_check_rejects_non_keys(bad):
    assert not security.looks_like_api_key(bad)


@pytest.mark.parametrize(
    ("granted", "required", "ok"),
    [
        ([INFER], INFER, True),
        ([INFER], ADMIN, False),
        ([ADMIN], ADMIN, True),
        ([ADMIN], INFER, True),  # admin implies infer
        ([ADMIN], [INFER, ADMIN], True),
        ([INFER], [INFER, ADMIN], False),
        ([], INFER, False),
        ([], [], True),
        (["superuser"], INFER, False),  # unknown scopes grant nothing
        ((s for s in [INFER]), INFER, True),  # any iterable
        (INFER, INFER, True),  # a bare string is one scope, not its characters
    ],
)
def test_check_scopes(granted, required, ok):
    assert check_scopes(granted, required) is ok


def test_normalize_scopes():
    assert security.normalize_scopes([ADMIN, INFER, ADMIN]) == [ADMIN, INFER]
    assert security.normalize_scopes(INFER) == [INFER]
    with pytest.raises(ValueError, match="unknown scope 'root'"):
        security.normalize_scopes([INFER, "root"])
    with pytest.raises(ValueError, match="at least one"):
        security.normalize_scopes([])
