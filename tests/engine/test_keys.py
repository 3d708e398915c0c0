"""Bucket and key validation: bad names are refused with a message that says why."""

from __future__ import annotations

import pytest

from edgestore.engine import Engine
from edgestore.engine.keys import validate_bucket, validate_key
from edgestore.errors import InvalidKey


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "empty"),
        ("a/../b", "'..'"),
        ("..", "'..'"),
        ("./a", "'.'"),
        ("a\x00b", "NUL"),
        ("a\nb", "control"),
        ("/abs", "starts with '/'"),
        ("x" * 1025, "1025 bytes"),
        ("é" * 513, "1026 bytes"),
    ],
)
def test_invalid_keys_are_rejected_with_the_reason(key: str, reason: str) -> None:
    with pytest.raises(InvalidKey, match=reason.replace("(", r"\(")):
        validate_key(key)


@pytest.mark.parametrize("key", ["a", "dir/sub/file.tar.gz", "x" * 1024, "ünïcode/ключ", "a..b"])
def test_valid_keys(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize("bucket", ["", "UPPER", "-x", "a" * 64, "has space", "a/b"])
def test_invalid_buckets(bucket: str) -> None:
    with pytest.raises(InvalidKey):
        validate_bucket(bucket)


def test_engine_refuses_bad_keys_before_storing_anything(small_engine: Engine) -> None:
    with pytest.raises(InvalidKey):
        small_engine.put(iter([b"data"]), key="../escape")
    with pytest.raises(InvalidKey):
        small_engine.uploads.create(key="a\x00b")
    assert small_engine.objects.usage().chunks == 0
