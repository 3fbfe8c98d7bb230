"""Every Redis key trackgate uses, each built here and nowhere else.

A project's data is split into partitions: `p` is a stable hash of the distinct_id (the decoder's), so one
user's events share a stream, in order, and per-user state (funnel attempts, unique users) lives in one
partition; reports sum the partitions. Partition `p` is shared by every project: all of its keys carry
the hash tag `{<p>}`, a project's begin `tg:{<p>}:<token>:`, so one transaction per partition per flush
writes every project's events of that partition, in one Redis Cluster slot, rather than a
transaction, a mark and a function call per (project, partition) (bench/README.md, "Many projects"). A
few keys belong to the partition rather than to a project (`SHARED_FAMILIES`:
the writers' marks, the dedup sets): their family comes right after the tag, and as every family name is
shorter than a token (8 characters at least), no project's key can be mistaken for one of them, nor one
project's for another's. Days are UTC `YYYY-MM-DD`.

Keys written before the partitions were shared, `tg:{<token>:<p>}:<family>...` (`legacy_partition_prefix`),
are moved to these names by `layout_migration.py`.

Two builders live outside this module and are checked against it: the native decoder names the streams
in the XADDs it packs (its `KEY_PREFIX`, `tests/test_keys.py`), and the `tg_count` function completes the
partition prefix `count_function_keys` hands it with each project's token and the `Family` names it is
loaded with (`tests/test_write_function.py` compares the keys it writes with the builders here).

The project registry (the project set, the name and secret indexes, each project's hash) carries one
hash tag of its own, `{registry}`, so that it lives in one slot of a Redis Cluster: creating a project
and restoring a backup stay single transactions there (a transaction may name one slot's keys only),
with the same guarantees as on one Redis. The registry is small and read a few times a second per
worker, so one node serving it costs nothing that matters. Registries written before the tag (the
`LEGACY_*` names) are moved to it by `registry_migration.py`. The rate buckets stay outside the tag:
each is one key, written by one function call, and the busiest of them should spread over the nodes.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Final

PREFIX: Final = "tg:"
"""What every key begins with (the native decoder's `KEY_PREFIX`)."""

REGISTRY_PREFIX: Final = PREFIX + "{registry}:"
"""What every key of the project registry begins with: the prefix and the registry's hash tag (a tag no
partition's can be: those are numbers)."""

PROJECTS_KEY: Final = REGISTRY_PREFIX + "projects"
"""Set of the project tokens."""
PROJECT_NAMES_KEY: Final = REGISTRY_PREFIX + "project-names"
"""Hash: project name -> token."""
PROJECT_SECRETS_KEY: Final = REGISTRY_PREFIX + "project-secrets"
"""Hash: an API secret's hash -> its project's token."""

LEGACY_PROJECTS_KEY: Final = PREFIX + "projects"
LEGACY_PROJECT_NAMES_KEY: Final = PREFIX + "project-names"
LEGACY_PROJECT_SECRETS_KEY: Final = PREFIX + "project-secrets"
"""The registry's keys before it had a hash tag, each as its tagged one above: what the migration reads."""

LAYOUT_KEY: Final = REGISTRY_PREFIX + "layout"
"""String: `LAYOUT_VERSION` once the keys written before the partitions were shared are moved
(`layout_migration.py`), so that a process starting after that reads one key to know it."""
LAYOUT_VERSION: Final = "2"
"""The layout this module builds: partitions shared by every project."""
LAYOUT_LOCK_KEY: Final = REGISTRY_PREFIX + "layout-lock"
"""String, with an expiry: the process moving the keys to this layout, so that the others wait for it."""


TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{8,64}")
"""What a project token is (`projects.check_token`): no glob character, so that a pattern can name a
project's keys, and longer than any family name, so that no project's key is a partition's own."""


class Family(StrEnum):
    """The kinds of a partition's keys: a key's name is the partition prefix, its family, then the key's
    own parts (if any) joined by ":". The function library's source names the families (`@FUNNEL_GOALS@`,
    ...) and is loaded with their values, so it builds its keys the same way."""

    STREAM = "events"
    MARKS = "batch:"
    HOURLY_COUNTS = "ev:"
    DAILY_COUNTS = "ed:"
    EVENT_NAMES = "en:"
    NAMES_SEEN = "nm"
    DAILY_USERS = "eu:"
    FUNNEL_NAMES = "funnels"
    FUNNEL_ACTIVITY = "fa"
    FUNNEL_GOALS = "fg:"
    FUNNEL_STATES = "fs:"
    FUNNEL_ATTEMPTS = "fx:"
    FUNNEL_COUNTERS = "fc:"
    PROFILE_UPDATES = "updates"
    PEOPLE = "people"
    PERSON = "pp:"
    GROUPS = "groups:"
    GROUP = "gp:"
    DEDUP = "dd:"
    DEDUP_BY_TIME = "dt:"


SHARED_FAMILIES: Final = frozenset({Family.MARKS, Family.DEDUP, Family.DEDUP_BY_TIME})
"""The families of a partition's own keys, shared by its projects (`shared_prefix`); every other
family's keys are a project's (`partition_prefix`)."""


def project_key(token: str) -> str:
    """Hash of a project: name, secret (a hash of it), created, funnel_window."""
    return f"{REGISTRY_PREFIX}project:{token}"


def legacy_project_key(token: str) -> str:
    """A project's hash before the registry had a hash tag."""
    return f"{PREFIX}project:{token}"


def rate_bucket_key(token: str) -> str:
    """Hash of a rate-limited project's token bucket, shared by every gateway: `level` (events it holds,
    a float) and `at` (Redis' time, seconds, when it held them). It expires once the bucket would be full
    again, which its absence means: it exists only while the project sends near its limit
    (`lua/rate_limits.lua`)."""
    return f"{PREFIX}rate:{token}"


def shared_prefix(partition: int) -> str:
    """What every key of one partition begins with, every project's: the prefix and the hash tag."""
    return f"{PREFIX}{{{partition}}}:"


def partition_prefix(token: str, partition: int) -> str:
    """What every key of one project in one partition begins with: the partition's prefix and the token."""
    return f"{PREFIX}{{{partition}}}:{token}:"


def legacy_partition_prefix(token: str, partition: int) -> str:
    """What a project's keys of one partition began with before the partitions were shared (its own hash
    tag): what `layout_migration.py` moves."""
    return f"{PREFIX}{{{token}:{partition}}}:"


def partitions_pattern(token: str) -> str:
    """A SCAN pattern that matches what every key of every partition of a project begins with, and
    possibly other keys too (a `*` also matches a `}`, which a distinct_id in a key's name may hold):
    keep only those `owner` gives the token (tokens hold no glob characters: projects.py refuses
    them)."""
    return f"{PREFIX}{{*}}:{token}:"


def owner(key: str) -> tuple[str, int] | None:
    """The (token, partition) of a project's key in a partition, None for any other key (the registry's,
    a partition's shared keys, another program's)."""
    if not key.startswith(PREFIX + "{"):
        return None
    close = key.find("}:", len(PREFIX) + 1)
    tag = key[len(PREFIX) + 1 : close]
    if close < 0 or not tag.isdigit() or not tag.isascii():
        return None
    token, colon, _ = key[close + 2 :].partition(":")
    if not colon or TOKEN.fullmatch(token) is None:
        return None
    return token, int(tag)


def stream_key(token: str, partition: int) -> str:
    """Stream of a partition's events: entry field `data` holds the event's normalised JSON; entry ids
    are Redis' own (arrival order)."""
    return partition_prefix(token, partition) + Family.STREAM


def mark_key(partition: int, writer: bytes) -> bytes:
    """String of one gateway writer's marks in a partition: which of its last batches numbered for the
    partition are in the streams, and which of them `tg_count` counted (a ring, see `store.py`)."""
    return (shared_prefix(partition) + Family.MARKS).encode() + writer


def hourly_counts_key(token: str, partition: int, day: str) -> str:
    """Hash of a day's event counts: `<HH>:<event name>` -> events of that name in that hour."""
    return partition_prefix(token, partition) + Family.HOURLY_COUNTS + day


def daily_counts_key(token: str, partition: int, day: str) -> str:
    """Hash of a day's event counts: `<event name>` -> events of that name that day (the hourly counts
    summed, so that a daily report reads one field per name)."""
    return f"{partition_prefix(token, partition)}{Family.DAILY_COUNTS}{day}"


def names_seen_key(token: str, partition: int) -> str:
    """Sorted set: event name -> the last day (`YYYYMMDD` as a number) the partition counted it. Listing
    the names of a range reads the names seen since its first day, not every day's counters; an entry
    leaves with the day's counters, after the counter retention."""
    return partition_prefix(token, partition) + Family.NAMES_SEEN


def event_names_key(token: str, partition: int, day: str) -> str:
    """Set of the event names counted under their own name that day: what the project's cap on names a
    day is checked against (`bounds.py`), and what tells `tg_count` a day's name is new."""
    return partition_prefix(token, partition) + Family.EVENT_NAMES + day


def daily_users_key(token: str, partition: int, day: str, event: str) -> str:
    """HyperLogLog of the distinct_ids that sent `event` that day."""
    return f"{partition_prefix(token, partition)}{Family.DAILY_USERS}{day}:{event}"


def funnel_names_key(token: str, partition: int) -> str:
    """Set of the funnel names the partition has followed: what reports list. The funnel cap is checked
    against `funnel_activity_key` instead, so a name stays here after its funnel gives its place up."""
    return partition_prefix(token, partition) + Family.FUNNEL_NAMES


def funnel_activity_key(token: str, partition: int) -> str:
    """Sorted set: funnel name -> when (server time, seconds) a batch last followed it. The funnels whose
    last batch is within the funnel window plus the late allowance are active, and what the funnel cap
    is checked against (`bounds.py`); a funnel quiet for longer is removed when a funnel not active asks
    for a place."""
    return partition_prefix(token, partition) + Family.FUNNEL_ACTIVITY


def funnel_goals_key(token: str, partition: int, funnel: str) -> str:
    """Hash of a funnel's goals: `<step>` -> the first goal the partition saw for it, `t<step>` -> when
    (server time, microseconds)."""
    return partition_prefix(token, partition) + Family.FUNNEL_GOALS + funnel


def funnel_states_key(token: str, partition: int, funnel: str) -> str:
    """Hash of users' current attempts: distinct_id -> `<entry time>:<step reached>:<time reached>`."""
    return partition_prefix(token, partition) + Family.FUNNEL_STATES + funnel


def funnel_attempts_key(token: str, partition: int, funnel: str) -> str:
    """Sorted set: distinct_id -> its attempt's entry time, so that attempts no later event can continue
    are found and removed from the states."""
    return partition_prefix(token, partition) + Family.FUNNEL_ATTEMPTS + funnel


def funnel_counters_key(token: str, partition: int, funnel: str, day: str) -> str:
    """Hash of the counters of the users whose attempt began on `day`: `u<step>` users, `h<step>` hits,
    `o<step>` out of order, `s<step>` seconds from the previous step, `q<step>:<goal>` hits per goal."""
    return f"{partition_prefix(token, partition)}{Family.FUNNEL_COUNTERS}{funnel}:{day}"


def profile_updates_key(token: str, partition: int) -> str:
    """Stream of a partition's profile updates (/engage, /groups), as the events' stream: field `data`
    holds the update's normalised JSON. The partition is the person's (their events') or the group's."""
    return partition_prefix(token, partition) + Family.PROFILE_UPDATES


def person_key(token: str, partition: int, distinct_id: str) -> str:
    """Hash of a person's profile: property name -> the value's JSON text."""
    return partition_prefix(token, partition) + Family.PERSON + distinct_id


def people_key(token: str, partition: int) -> str:
    """Sorted set (every score 0, so in name order) of the distinct_ids with a profile in the partition."""
    return partition_prefix(token, partition) + Family.PEOPLE


def group_profile_key(token: str, partition: int, group_key: str, group_id: str) -> str:
    """Hash of a group's profile, as a person's. The group key's length (in UTF-8 bytes) comes first, so
    that no (key, id) pair names another's profile."""
    length = len(group_key.encode())
    return f"{partition_prefix(token, partition)}{Family.GROUP}{length}:{group_key}:{group_id}"


def groups_key(token: str, partition: int, group_key: str) -> str:
    """Sorted set (as `people_key`) of the ids of a group key's groups with a profile in the partition."""
    return partition_prefix(token, partition) + Family.GROUPS + group_key


def dedup_key(partition: int, window: int, bucket: int) -> str:
    """Set of the dedup hashes (see `store.py`) of the events with an `$insert_id` that the partition
    stored late, in bucket `bucket` of `window` seconds (server time // window) when their own time's
    bucket (`dedup_by_time_key`) was over: what a retried late event is looked up in, with the previous
    bucket's. It expires when the next bucket ends; the window is in the name, so that gateways run with
    another window never misread it."""
    return f"{shared_prefix(partition)}{Family.DEDUP}{window}:{bucket}"


def dedup_by_time_key(partition: int, window: int, bucket: int) -> str:
    """Set of the dedup hashes of the events with an `$insert_id` whose time is in bucket `bucket` of
    `window` seconds (time // window) and that the partition stored before that bucket was over (server
    time): what a retry of one is looked up in, the one set for an event that comes on time. It expires
    when the next bucket ends."""
    return f"{shared_prefix(partition)}{Family.DEDUP_BY_TIME}{window}:{bucket}"


def count_function_keys(partition: int) -> tuple[str]:
    """The KEYS of `tg_count` for a partition: the partition's prefix, which the function completes with
    a project's token, or a shared family, as the builders above do."""
    return (shared_prefix(partition),)
