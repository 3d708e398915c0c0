"""The engine's object API as the CLI calls it: selectors and listing bounds answer with
domain errors (not found, invalid input), never a database error."""

from __future__ import annotations

import pytest

from edgestore.engine import Engine, ObjectSelector
from edgestore.errors import InvalidInput, ObjectNotFound


@pytest.mark.parametrize("version", [0, -1, 2**31, 10**12])
def test_a_version_number_no_version_can_have_is_not_found(
    small_engine: Engine, version: int
) -> None:
    """PostgreSQL's integer column refused 2**31 with a DataError: `edgestore stat -V` and
    `rm -V` printed its traceback."""
    info = small_engine.put(iter([b"data"]), key="k")
    for sel in (
        ObjectSelector(bucket="default", key="k", version=version),
        ObjectSelector(object_id=info.object_id, version=version),
    ):
        with pytest.raises(ObjectNotFound, match="not found"):
            small_engine.objects.stat(sel)


@pytest.mark.parametrize("limit", [0, -1])
def test_a_listing_limit_below_one_is_invalid(small_engine: Engine, limit: int) -> None:
    """SQLite took LIMIT -1 as "no limit" (the whole store in memory), PostgreSQL refused it
    with a DataError traceback (`edgestore ls --limit -1`)."""
    small_engine.put(iter([b"data"]), key="k")
    with pytest.raises(InvalidInput, match="limit"):
        small_engine.objects.list(limit=limit)


def test_an_object_id_in_capitals_names_the_same_object(small_engine: Engine) -> None:
    """UUIDs are case-insensitive (RFC 9562) and is_object_id accepted capitals, but the
    lookup compared them as stored (lower case): /ids/{ID} was a 404 for an existing object."""
    info = small_engine.put(iter([b"data"]), key="k")
    upper = info.object_id.upper()
    assert small_engine.objects.stat(ObjectSelector(object_id=upper)) == info
    assert [v.version_id for v in small_engine.objects.versions(upper)] == [info.version_id]


def test_versions_page_past_a_cursor(small_engine: Engine) -> None:
    """A page past the oldest version is empty, not "no such object"; an unknown object is."""
    infos = [small_engine.put(iter([f"v{n}".encode()]), key="paged") for n in range(4)]
    oid = infos[0].object_id
    versions = small_engine.objects.versions
    assert [v.version for v in versions(oid)] == [4, 3, 2, 1]
    assert [v.version for v in versions(oid, limit=2)] == [4, 3]
    assert [v.version for v in versions(oid, after=3, limit=5)] == [2, 1]
    assert versions(oid, after=1) == []
    with pytest.raises(ObjectNotFound):
        versions("00000000-0000-4000-8000-000000000000", after=3)
    with pytest.raises(InvalidInput, match="limit"):
        versions(oid, limit=0)
