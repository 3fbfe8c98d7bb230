"""Funnel reports, assembled from the counters the `tg_count` function keeps per partition.

The function does the counting when it stores an event (`lua/trackgate.lua`, loaded by `store.py`); a
report only sums a few small hashes per partition and day, so it costs the same whatever the number of
events.

Semantics, as the function applies them:
- A user (distinct_id) counts at step N of a funnel once per attempt, and only after counting at step
  N-1 in the same attempt. An attempt starts with a step 1 and lasts the project's funnel window
  (`projects.DEFAULT_FUNNEL_WINDOW` unless set); a step 1 after the window starts a new attempt.
- A step that does not follow the user's last step (skipped, before step 1, after the window) is stored
  and counted as out of order; it does not advance the user. A repeated step is a hit only.
- Order: one user's events in the order they reached the gateway, and within one request by `time`.
- A step's goal is the first goal seen for it; an event with another goal still counts for its step, and
  is counted as a goal conflict.
- Every mp_funnel event is a hit of its step. Counters belong to the UTC day of the attempt's step 1, so a
  date range selects the users whose step 1 fell in it, with everything they did within the window.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import msgspec

from trackgate._native import MAX_FUNNEL_STEP
from trackgate.keys import funnel_counters_key, funnel_goals_key, funnel_names_key
from trackgate.redis_target import RedisClient

MAX_RANGE_DAYS = 366
_COUNTERS = ("u", "h", "o", "s")


class StepGoal(msgspec.Struct, frozen=True):
    step: int
    goal: str


class FunnelInfo(msgspec.Struct, frozen=True):
    name: str
    steps: list[StepGoal]


class Step(msgspec.Struct, frozen=True):
    step: int
    goal: str
    users: int
    hits: int
    out_of_order: int
    goal_conflicts: int
    conversion_from_previous: float
    conversion_overall: float
    avg_seconds_from_previous: float | None


class FunnelReport(msgspec.Struct, frozen=True, rename={"start": "from", "end": "to"}):
    funnel: str
    start: str
    end: str
    steps: list[Step]
    days: dict[str, list[Step]]


def days_between(start: dt.date, end: dt.date) -> list[dt.date]:
    if end < start:
        raise ValueError("`from` is after `to`")
    count = (end - start).days + 1
    if count > MAX_RANGE_DAYS:
        raise ValueError(f"a date range spans at most {MAX_RANGE_DAYS} days")
    return [start + dt.timedelta(days=i) for i in range(count)]


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


async def _goals(client: RedisClient, token: str, partitions: int, name: str) -> dict[int, str]:
    """Each step's goal: of the goals the partitions saw first, the earliest."""
    async with client.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            pipe.hgetall(funnel_goals_key(token, p, name))
        replies: list[dict[bytes, bytes]] = await pipe.execute()
    first: dict[int, tuple[float, str]] = {}
    for fields in replies:
        for field, value in fields.items():
            if field.startswith(b"t"):
                continue
            step = int(field)
            if step > MAX_FUNNEL_STEP:
                continue
            seen = float(fields.get(b"t" + field, b"0"))
            if step not in first or seen < first[step][0]:
                first[step] = (seen, _text(value))
    return {step: goal for step, (_, goal) in sorted(first.items())}


async def list_funnels(client: RedisClient, token: str, partitions: int) -> list[FunnelInfo]:
    async with client.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            pipe.smembers(funnel_names_key(token, p))
        replies: list[set[bytes]] = await pipe.execute()
    names = sorted({_text(n) for members in replies for n in members})
    funnels = []
    for name in names:
        goals = await _goals(client, token, partitions, name)
        funnels.append(FunnelInfo(name, [StepGoal(step, goal) for step, goal in goals.items()]))
    return funnels


Totals = dict[tuple[str, int], int]
"""(counter, step) -> sum; counter `q` counts the hits whose goal is the step's goal."""


def _steps(goals: dict[int, str], totals: Totals) -> list[Step]:
    # Steps above the cap (stored before there was one) are left out: a report stays bounded.
    last = max((n for n in [*goals, *(n for _, n in totals)] if n <= MAX_FUNNEL_STEP), default=0)
    steps = []
    first_users = totals.get(("u", 1), 0)
    previous_users = first_users
    for n in range(1, last + 1):
        users = totals.get(("u", n), 0)
        seconds = totals.get(("s", n), 0)
        steps.append(
            Step(
                step=n,
                goal=goals.get(n, ""),
                users=users,
                hits=totals.get(("h", n), 0),
                out_of_order=totals.get(("o", n), 0),
                goal_conflicts=totals.get(("h", n), 0) - totals.get(("q", n), 0),
                conversion_from_previous=_percent(users, previous_users),
                conversion_overall=_percent(users, first_users),
                avg_seconds_from_previous=round(seconds / users, 2) if n > 1 and users else None,
            )
        )
        previous_users = users
    return steps


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def _add(totals: Totals, fields: dict[bytes, bytes], goals: dict[int, bytes]) -> None:
    for field, value in fields.items():
        kind = field[:1].decode()
        if kind in _COUNTERS:
            key = (kind, int(field[1:]))
        elif kind == "q":
            step, _, goal = field[1:].partition(b":")
            if goals.get(int(step)) != goal:
                continue
            key = ("q", int(step))
        else:
            continue
        totals[key] = totals.get(key, 0) + int(value)


def report_keys_read(days: int, partitions: int) -> int:
    """The Redis keys `funnel_report` reads: the goals, and the counters of each day, per partition."""
    return (days + 1) * partitions


async def funnel_report(
    client: RedisClient, token: str, partitions: int, name: str, start: dt.date, end: dt.date
) -> FunnelReport | None:
    """The report over the users whose step 1 fell from `start` to `end` (UTC days, inclusive); None
    when the project has no such funnel."""
    days = days_between(start, end)
    goals = await _goals(client, token, partitions, name)
    if not goals:
        return None
    async with client.pipeline(transaction=False) as pipe:
        for day in days:
            for p in range(partitions):
                pipe.hgetall(funnel_counters_key(token, p, name, day.isoformat()))
        replies: list[dict[bytes, bytes]] = await pipe.execute()
    goal_bytes = {step: goal.encode() for step, goal in goals.items()}
    overall: Totals = {}
    per_day: dict[str, Totals] = {}
    for i, day in enumerate(days):
        totals: Totals = {}
        for fields in replies[i * partitions : (i + 1) * partitions]:
            _add(totals, fields, goal_bytes)
        if totals:
            per_day[day.isoformat()] = totals
            for key, value in totals.items():
                overall[key] = overall.get(key, 0) + value
    return FunnelReport(
        funnel=name,
        start=start.isoformat(),
        end=end.isoformat(),
        steps=_steps(goals, overall),
        days={day: _steps(goals, totals) for day, totals in per_day.items()},
    )


def render_table(report: FunnelReport) -> str:
    """The report as a plain-text table, for the CLI."""
    header = (
        "step",
        "goal",
        "users",
        "conv. prev",
        "conv. overall",
        "avg s",
        "hits",
        "out of order",
        "conflicts",
    )
    rows: list[tuple[str, ...]] = [header]
    for s in report.steps:
        avg = "" if s.avg_seconds_from_previous is None else f"{s.avg_seconds_from_previous:.1f}"
        rows.append(
            (
                str(s.step),
                s.goal,
                str(s.users),
                f"{s.conversion_from_previous:.2f}%",
                f"{s.conversion_overall:.2f}%",
                avg,
                str(s.hits),
                str(s.out_of_order),
                str(s.goal_conflicts),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"funnel {report.funnel!r}, users who entered from {report.start} to {report.end}"]
    for n, row in enumerate(rows):
        cells: Iterable[str] = (
            cell.ljust(w) if i == 1 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
