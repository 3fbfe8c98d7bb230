"""The key layout: what `trackgate.keys` builds is the layout the README documents for the tools that
read Redis, and the native decoder names the same streams."""

from __future__ import annotations

import fnmatch
import json

from trackgate import Options, decode_request, keys
from trackgate.redis_pipe import bulk


def test_every_key_is_named_as_documented() -> None:
    assert keys.stream_key("tok", 3) == "tg:{3}:tok:events"
    assert keys.mark_key(3, b"w1") == b"tg:{3}:batch:w1"
    assert keys.dedup_by_time_key(3, 600, 7) == "tg:{3}:dt:600:7"
    assert keys.dedup_key(3, 600, 7) == "tg:{3}:dd:600:7"
    assert keys.hourly_counts_key("tok", 3, "2026-11-20") == "tg:{3}:tok:ev:2026-11-20"
    assert keys.daily_users_key("tok", 3, "2026-11-20", "Sign up") == "tg:{3}:tok:eu:2026-11-20:Sign up"
    assert keys.funnel_names_key("tok", 3) == "tg:{3}:tok:funnels"
    assert keys.funnel_activity_key("tok", 3) == "tg:{3}:tok:fa"
    assert keys.funnel_goals_key("tok", 3, "signup") == "tg:{3}:tok:fg:signup"
    assert keys.funnel_states_key("tok", 3, "signup") == "tg:{3}:tok:fs:signup"
    assert keys.funnel_attempts_key("tok", 3, "signup") == "tg:{3}:tok:fx:signup"
    assert keys.funnel_counters_key("tok", 3, "signup", "2026-11-20") == "tg:{3}:tok:fc:signup:2026-11-20"
    assert keys.PROJECTS_KEY == "tg:{registry}:projects"
    assert keys.project_key("tok") == "tg:{registry}:project:tok"
    assert keys.PROJECT_NAMES_KEY == "tg:{registry}:project-names"
    assert keys.PROJECT_SECRETS_KEY == "tg:{registry}:project-secrets"


def test_the_function_is_given_the_partition_prefix() -> None:
    assert keys.count_function_keys(3) == ("tg:{3}:",)


def test_the_decoder_adds_events_to_the_streams_keys_names() -> None:
    """The native decoder builds the stream names of its XADDs itself (from its KEY_PREFIX): every XADD
    of every batch names `keys.stream_key` of the batch's project and partition."""
    events = [
        {"event": "e", "properties": {"token": token, "distinct_id": f"u{i}", "time": 1_700_000_000}}
        for token in ("first-token", "second_token")
        for i in range(40)
    ]
    body = json.dumps(events).encode()
    request = decode_request(b"", body, "application/json", now=1_700_000_000, options=Options(partitions=8))
    assert request.errors == []
    seen = set()
    for batch in request.batches:
        xadd = b"*5\r\n$4\r\nXADD\r\n" + bulk(keys.stream_key(batch.token, batch.partition).encode())
        assert batch.xadds.count(xadd) == batch.xadds.count(b"XADD") == batch.count
        seen.add((batch.token, batch.partition))
    assert len(seen) == 16


def test_the_partitions_pattern_matches_every_partition_key_of_its_project_only() -> None:
    pattern = keys.partitions_pattern("tok")
    assert fnmatch.fnmatchcase(keys.stream_key("tok", 3), pattern + "*")
    assert fnmatch.fnmatchcase(keys.hourly_counts_key("tok", 0, "2026-12-07"), pattern + "*")
    assert not fnmatch.fnmatchcase(keys.stream_key("tok2", 3), pattern + "*")
    assert not fnmatch.fnmatchcase(keys.project_key("tok"), pattern + "*")
