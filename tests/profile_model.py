"""What profile updates make of profiles, in plain Python (README, "Profiles"): the tests compare what
Redis holds after the real decoder and the real function library with what this model gives, and read
the profiles Redis holds."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import redis
from trackgate import Options, bounds, keys
from trackgate._native import profile_partition

LAST_SEEN = "$last_seen"
OPTIONS = Options()
CREATES = {"$set", "$set_once", "$add", "$append", "$union"}

ProfileId = tuple[str | None, str]
"""(None, distinct_id) for a person, (group key, group id) for a group."""


def text(value: Any) -> str:
    """A value's JSON text as the function compares values: minified, key order kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def last_seen(time: float) -> str:
    return dt.datetime.fromtimestamp(math.floor(time), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def update_time(update: dict[str, Any], now: float) -> float:
    """`$time` as the decoder reads it: seconds or milliseconds; missing or too far ahead, `now`."""
    sent = update.get("$time")
    if sent is None:
        return now
    seconds = sent / 1000 if sent >= 1e11 else sent
    return now if seconds - now > OPTIONS.max_future_skew else float(seconds)


def profile_id(update: dict[str, Any], *, groups: bool) -> ProfileId:
    if groups:
        return str(update["$group_key"]), str(update["$group_id"])
    return None, str(update["$distinct_id"])


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _sum(old: Any, value: Any) -> Any:
    total = float(old) + float(value)
    if not math.isfinite(total):
        return None
    return int(total) if total.is_integer() and abs(total) < 2**53 else total


def _changed(op: str, old: Any, has_old: bool, value: Any) -> tuple[bool, Any]:
    """(whether the property changes, its new value)."""
    if op == "$set":
        return True, value
    if op == "$set_once":
        return not has_old, value
    if op == "$add":
        if has_old and not _is_number(old):
            return False, None
        total = _sum(old if has_old else 0, value)
        return total is not None, total
    if op == "$append":
        if not has_old:
            return True, [value]
        if isinstance(old, list):
            return True, [*old, value][-bounds.MAX_PROFILE_LIST :]
        return False, None
    if op == "$union":
        if has_old and not isinstance(old, list):
            return False, None
        merged = list(old) if has_old else []
        seen = {text(element) for element in merged}
        for element in value:
            if text(element) not in seen:
                seen.add(text(element))
                merged.append(element)
        changed = not has_old or len(merged) > len(old)
        return changed, merged[-bounds.MAX_PROFILE_LIST :]
    assert op == "$remove", op
    if not (has_old and isinstance(old, list)):
        return False, None
    kept = [element for element in old if text(element) != text(value)]
    return len(kept) < len(old), kept


class Profiles:
    """The profiles a sequence of updates makes: property name -> value, `$last_seen` among them."""

    def __init__(self) -> None:
        self.profiles: dict[ProfileId, dict[str, Any]] = {}
        self.refused = 0

    def apply(self, update: dict[str, Any], *, groups: bool, now: float) -> None:
        """One valid update (as sent), received at `now`."""
        pid = profile_id(update, groups=groups)
        [op] = [key for key in update if key in {*CREATES, "$remove", "$unset", "$delete"}]
        if op == "$delete":
            self.profiles.pop(pid, None)
            return
        existed = pid in self.profiles
        if not (existed or op in CREATES):
            return
        profile = self.profiles.setdefault(pid, {})
        if op == "$unset":
            for name in update[op]:
                profile.pop(name, None)
        else:
            room = bounds.MAX_PROFILE_PROPERTIES - len([name for name in profile if name != LAST_SEEN])
            for name, value in update[op].items():
                has_old = name in profile
                changes, new = _changed(op, profile.get(name), has_old, value)
                if not changes:
                    continue
                if not has_old and name != LAST_SEEN:
                    if room <= 0:
                        self.refused += 1
                        continue
                    room -= 1
                profile[name] = new
        if not update.get("$ignore_time", False):
            profile[LAST_SEEN] = last_seen(update_time(update, now))
        if not profile:
            del self.profiles[pid]


def partition(pid: ProfileId, partitions: int = OPTIONS.partitions) -> int:
    group_key, id_ = pid
    return profile_partition(id_, group_key=group_key, partitions=partitions)


def profile_key(token: str, pid: ProfileId, partitions: int = OPTIONS.partitions) -> str:
    group_key, id_ = pid
    p = partition(pid, partitions)
    if group_key is None:
        return keys.person_key(token, p, id_)
    return keys.group_profile_key(token, p, group_key, id_)


def stored_profile(
    client: redis.Redis, token: str, pid: ProfileId, partitions: int = OPTIONS.partitions
) -> dict[str, Any]:
    """A profile as Redis holds it, each value read from its JSON."""
    fields: dict[bytes, bytes] = client.hgetall(profile_key(token, pid, partitions))  # type: ignore[assignment]
    return {name.decode(): json.loads(value) for name, value in fields.items()}
