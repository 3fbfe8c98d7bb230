"""The native module's types as Python sees them: the Literals that type checkers read are the kinds the
decoder has, and a decoder error's status is its kind's."""

from __future__ import annotations

import typing
import zlib

import pytest
import trackgate
from trackgate import _native
from trackgate.decode_errors import ErrorDetails, EventErrorKind, RequestErrorKind


def test_the_literals_are_the_decoders_kinds() -> None:
    assert typing.get_args(RequestErrorKind) == tuple(_native.REQUEST_ERROR_STATUS)
    assert typing.get_args(EventErrorKind) == _native.EVENT_ERROR_KINDS


def test_error_details_has_the_keys_of_errors() -> None:
    with pytest.raises(trackgate.DecodeError) as caught:
        trackgate.decode('[{"event": "e"}, 5]', now=0.0)
    details = caught.value.errors()
    assert [set(d) for d in details] == [set(ErrorDetails.__annotations__)] * 2
    assert {d["kind"] for d in details} <= set(_native.EVENT_ERROR_KINDS)
    assert caught.value.status == _native.REQUEST_ERROR_STATUS[caught.value.kind]


@pytest.mark.parametrize(
    ("query", "body", "encoding"),
    [
        ("", b"", None),
        ("data=%25", b"", None),
        ("", b"x", "br"),
        ("data=[]", b"", None),
        ("data=[{},{}]", b"", None),
    ],
)
def test_a_refused_request_has_its_kinds_status(query: str, body: bytes, encoding: str | None) -> None:
    with pytest.raises(trackgate.DecodeError) as caught:
        trackgate.decode_request(
            query, body, None, encoding, now=0.0, options=trackgate.Options(max_events=1)
        )
    assert caught.value.kind != "invalid_events"
    assert caught.value.status == _native.REQUEST_ERROR_STATUS[caught.value.kind]


def test_what_a_request_carries_is_named_and_frozen() -> None:
    body = b'[{"event": "e", "properties": {"token": "t", "distinct_id": "u"}}, {"event": "e"}]'
    request = trackgate.decode_request(
        "", body, "application/json", now=1e9, options=trackgate.Options(dedup_window=0)
    )
    [error] = request.errors
    assert (error.index, error.field, error.kind) == (1, "properties.token", "token_missing")
    assert error == request.errors[0]
    assert "token_missing" in repr(error)
    [batch] = request.batches
    assert (batch.token, batch.partition, batch.count, batch.args) == ("t", zlib.crc32(b"u") % 4, 1, 4)
    assert batch.xadds.startswith(b"*5\r\n$4\r\nXADD\r\n")
    with pytest.raises(AttributeError):
        batch.count = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        error.kind = "too_deep"  # type: ignore[misc]
    parts = {
        name: getattr(batch, name) for name in ("token", "partition", "count", "args", "packed", "xadds")
    }
    assert {name: getattr(_native.PartitionBatch(**parts), name) for name in parts} == parts
