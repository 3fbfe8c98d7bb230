"""The Engage Query API, `/api/2.0/engage` and `/api/query/engage` (api.py routes them): profiles read
back in the shape Mixpanel's query API answers, `{"page", "page_size", "session_id", "status", "total",
"results": [{"$distinct_id", "$properties"}]}`, so that tools written for Mixpanel read trackgate's.

A profile by `distinct_id`, several by `distinct_ids` (a JSON list), or a page at a time over all of a
project's people; with `data_group_id` (a group key) the same for that key's groups, the ids being group
ids. Pages go through the partitions' indexes (keys.people_key, keys.groups_key) in order, each in name
order. A page's `session_id` says where it ended: asked for the next page with it, the next page starts
there, so profiles made or deleted meanwhile shift no profile into another page; without it (or for
another page) a page starts at its rank, as the indexes are then. `every_profile` goes through all the
pages so (`trackgate profiles export`).

Properties are written from the JSON texts the profiles hold, never parsed here.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Final, cast

import msgspec

from trackgate import keys
from trackgate._native import profile_partition
from trackgate.parameters import ParameterError, Query, json_names, last, refuse, whole
from trackgate.report_reads import Command, Reads

MAX_PAGE_SIZE: Final = 1000
"""Profiles a page holds at most, and by default (Mixpanel's)."""
MAX_IDS: Final = 2000
"""Ids one query may name."""
UNSUPPORTED: Final = ("where", "filter_by_cohort", "cohort_id", "behaviors", "as_of_timestamp")
"""Mixpanel's filters, which trackgate does not evaluate (parameters.refuse)."""

_encode = msgspec.json.encode
_MAX_SESSION_CHARS: Final = 1000


class _Cursor(msgspec.Struct, array_like=True, frozen=True):
    """Where a page ended: its number, the partition and the id of its last profile."""

    page: int
    partition: int
    last: str


@dataclass(frozen=True, slots=True)
class EngageQuery:
    group_key: str | None
    ids: list[str] | None
    page: int
    page_size: int
    session_id: str | None
    output_properties: list[str] | None

    @classmethod
    def parse(cls, params: Query) -> EngageQuery:
        """The query of a request's parameters (the last value of each)."""
        refuse(params, UNSUPPORTED, "filter the profiles the API returns instead")
        one, many = last(params, "distinct_id"), last(params, "distinct_ids")
        if one is not None and many is not None:
            raise ParameterError("distinct_id, distinct_ids: give one of them")
        ids = (
            [one] if one is not None else None if many is None else json_names(many, "distinct_ids", MAX_IDS)
        )
        # (An empty parameter is no parameter: parse_qs leaves it out.)
        group_key = last(params, "data_group_id")
        output = last(params, "output_properties")
        session_id = last(params, "session_id")
        if session_id is not None and len(session_id) > _MAX_SESSION_CHARS:
            raise ParameterError(f"session_id: at most {_MAX_SESSION_CHARS} characters")
        return cls(
            group_key=group_key,
            ids=ids,
            page=whole(params, "page", 0, 2**31),
            page_size=whole(params, "page_size", MAX_PAGE_SIZE, MAX_PAGE_SIZE, least=1),
            session_id=session_id,
            output_properties=None if output is None else json_names(output, "output_properties", 1000),
        )


async def engage(reads: Reads, token: str, partitions: int, query: EngageQuery) -> bytes:
    """The answer's JSON: the profiles asked for, or the page asked for."""
    if query.ids is not None:
        found = [
            (profile_partition(i, group_key=query.group_key, partitions=partitions), i) for i in query.ids
        ]
        results = await _results(reads, token, query, found)
        return _answer(query, "", len(results), results)
    page = await _page_of_all(reads, token, partitions, query)
    return _answer(query, page.session_id, page.total, page.results)


@dataclass(frozen=True, slots=True)
class Page:
    """A page over all the profiles: each result's JSON, the session id that asks for the next page, the
    profiles the indexes counted, and whether the profiles ran out before the page was full."""

    results: list[bytes]
    session_id: str
    total: int
    last: bool


async def every_profile(
    reads: Reads, token: str, partitions: int, group_key: str | None
) -> AsyncIterator[Page]:
    """Every profile of the project's people (or of `group_key`'s groups), a page at a time as the API's
    pages give them, each page asked for with the last one's session id."""
    query = EngageQuery(group_key, None, 0, MAX_PAGE_SIZE, None, None)
    while True:
        page = await _page_of_all(reads, token, partitions, query)
        yield page
        if page.last:
            return
        query = replace(query, page=query.page + 1, session_id=page.session_id)


async def _page_of_all(reads: Reads, token: str, partitions: int, query: EngageQuery) -> Page:
    indexes = [_index_key(token, partition, query.group_key) for partition in range(partitions)]
    counts: list[int] = await reads([("ZCARD", index) for index in indexes])
    page = await _page(reads, indexes, counts, query)
    results = await _results(reads, token, query, page)
    session = query.session_id or ""
    if page:
        partition, last = page[-1]
        session = base64.urlsafe_b64encode(_encode(_Cursor(query.page, partition, last))).decode()
    return Page(results, session, sum(counts), len(page) < query.page_size)


def _index_key(token: str, partition: int, group_key: str | None) -> str:
    if group_key is None:
        return keys.people_key(token, partition)
    return keys.groups_key(token, partition, group_key)


def _cursor(query: EngageQuery) -> _Cursor | None:
    """The end of the page before the one asked for, when the session id is that page's."""
    if not query.session_id:
        return None
    try:
        cursor = msgspec.json.decode(base64.urlsafe_b64decode(query.session_id), type=_Cursor)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        return None
    return cursor if cursor.page == query.page - 1 else None


async def _page(
    reads: Reads, indexes: list[str], counts: list[int], query: EngageQuery
) -> list[tuple[int, str]]:
    """The (partition, id) of each profile of the page asked for, in order."""
    size = query.page_size
    cursor = _cursor(query)
    if cursor is not None and 0 <= cursor.partition < len(indexes):
        partition, rank, after = cursor.partition, 0, cursor.last
    else:
        partition, rank, after = 0, query.page * size, None
        while partition < len(indexes) and rank >= counts[partition]:
            rank -= counts[partition]
            partition += 1
    page: list[tuple[int, str]] = []
    while len(page) < size and partition < len(indexes):
        need = size - len(page)
        if after is not None:
            command: Command = ("ZRANGE", indexes[partition], "(" + after, "+", "BYLEX", "LIMIT", 0, need)
        else:
            command = ("ZRANGE", indexes[partition], rank, rank + need - 1)
        [ids] = await reads([command])
        page.extend((partition, found.decode()) for found in cast("list[bytes]", ids))
        partition, rank, after = partition + 1, 0, None
    return page


async def _results(
    reads: Reads, token: str, query: EngageQuery, profiles: list[tuple[int, str]]
) -> list[bytes]:
    """Each profile that exists, as a result's JSON: all its properties, or those of
    `output_properties` it has."""
    names = query.output_properties
    commands: list[Command] = []
    for partition, id_ in profiles:
        key = (
            keys.person_key(token, partition, id_)
            if query.group_key is None
            else keys.group_profile_key(token, partition, query.group_key, id_)
        )
        if names is None:
            commands.append(("HGETALL", key))
        else:
            commands += [("EXISTS", key), ("HMGET", key, *(names or ["$last_seen"]))]
    replies = await reads(commands)
    results = []
    for n, (_, id_) in enumerate(profiles):
        if names is None:
            # HGETALL's reply is flat: name, value, name, value, ...
            flat: list[bytes] = replies[n]
            fields = list(zip(flat[::2], flat[1::2], strict=True))
            if not fields:
                continue
        else:
            if not replies[2 * n]:
                continue
            values = replies[2 * n + 1] if names else []
            fields = [(name.encode(), v) for name, v in zip(names, values, strict=True) if v is not None]
        properties = b",".join(_encode(name.decode()) + b":" + value for name, value in fields)
        results.append(b'{"$distinct_id":%s,"$properties":{%s}}' % (_encode(id_), properties))
    return results


def _answer(query: EngageQuery, session_id: str, total: int, results: list[bytes]) -> bytes:
    return b'{"page":%d,"page_size":%d,"session_id":%s,"status":"ok","total":%d,"results":[%s]}' % (
        query.page,
        query.page_size,
        _encode(session_id),
        total,
        b",".join(results),
    )
