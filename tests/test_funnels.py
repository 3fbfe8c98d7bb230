"""Funnel semantics, case by case: events decoded by the native decoder, written by the real `tg_count`
function into a real redis-server, reported by `trackgate.funnels` and `trackgate.counts`."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from typing import Any

import pytest
from conftest import PARTITIONS, Batch, RedisServer, partition_of, send_count, send_write
from trackgate import Options, decode_request, keys, redis_target, store
from trackgate._native import MAX_FUNNEL_STEP
from trackgate.counts import EventCounts, event_counts
from trackgate.funnels import FunnelReport, Step, funnel_report, list_funnels
from trackgate.report_reads import ReportReads

DAY = 86400
# 2026-11-20T00:00:00Z
MIDNIGHT = dt.datetime(2026, 11, 20, tzinfo=dt.UTC).timestamp()
D0 = dt.date(2026, 11, 20)
NOW = MIDNIGHT + 10 * DAY


def reader(url: str) -> redis_target.RedisClient:
    """An asyncio client of the session's Redis, one redis-server or a cluster."""
    return redis_target.client(redis_target.parse(url), timeout=10, connect_timeout=5)


class Project:
    """A project's token, and a writer that sends requests as the gateway's batcher does."""

    def __init__(self, server: RedisServer, window: int = 30 * DAY) -> None:
        self.token = "t" + uuid.uuid4().hex[:15]
        self.url = server.url
        self.client = server.client()
        self.client.function_load(store.FUNCTION_SOURCE, replace=True)
        self.window = window
        self.writer = uuid.uuid4().hex[:12].encode()
        self.seq = 0

    def decode(self, events: list[dict[str, Any]]) -> list[Batch]:
        """The partition batches of one request holding `events`."""
        request = decode_request(
            b"",
            json.dumps(events).encode(),
            "application/json",
            now=NOW,
            options=Options(max_age=400 * DAY, partitions=PARTITIONS),
        )
        assert request.errors == []
        return request.batches

    def send(self, *events: dict[str, Any]) -> None:
        """One request holding `events`, written one transaction per partition."""
        for batch in self.decode(list(events)):
            self.seq += 1
            reply = send_write(self.client, self.writer, self.seq, [batch], window=self.window)
            assert reply[-1] == [batch.count, 0]

    def report(self, name: str = "signup", start: dt.date = D0, end: dt.date | None = None) -> FunnelReport:
        async def read() -> FunnelReport | None:
            async with reader(self.url) as client:
                return await funnel_report(client, self.token, PARTITIONS, name, start, end or start)

        report = asyncio.run(read())
        assert report is not None
        return report

    def counts(
        self, start: dt.date, end: dt.date, unit: str = "day", event: str | None = None
    ) -> EventCounts:
        async def read() -> EventCounts:
            reads = ReportReads(self.url, 10)
            try:
                return await event_counts(
                    reads, self.token, PARTITIONS, start, end, "hour" if unit == "hour" else "day", event
                )
            finally:
                reads.close()

        return asyncio.run(read())


def step(
    project: Project, user: str, n: int | str, at: float, goal: str | None = None, **extra: Any
) -> dict[str, Any]:
    goal = goal if goal is not None else f"goal {n}"
    properties = {"token": project.token, "distinct_id": user, "time": at, "funnel": "signup", "step": n}
    return {"event": "mp_funnel", "properties": {**properties, "goal": goal, **extra}}


def column(report: FunnelReport | list[Step], name: str) -> list[Any]:
    steps = report.steps if isinstance(report, FunnelReport) else report
    return [getattr(s, name) for s in steps]


@pytest.fixture
def project(redis_server: RedisServer) -> Project:
    return Project(redis_server)


T = MIDNIGHT + 3600  # 01:00 on D0


def test_in_order(project: Project) -> None:
    project.send(step(project, "u1", 1, T))
    project.send(step(project, "u1", 2, T + 60))
    project.send(step(project, "u1", 3, T + 180))
    report = project.report()
    assert column(report, "users") == [1, 1, 1]
    assert column(report, "hits") == [1, 1, 1]
    assert column(report, "out_of_order") == [0, 0, 0]
    assert column(report, "conversion_from_previous") == [100.0, 100.0, 100.0]
    assert column(report, "conversion_overall") == [100.0, 100.0, 100.0]
    assert column(report, "avg_seconds_from_previous") == [None, 60.0, 120.0]
    assert column(report, "goal") == ["goal 1", "goal 2", "goal 3"]
    assert list(report.days) == [D0.isoformat()]


def test_a_skipped_step_does_not_advance_until_the_missing_step_comes(project: Project) -> None:
    project.send(step(project, "u1", 1, T), step(project, "u1", 3, T + 10))
    assert column(project.report(), "users") == [1, 0, 0]
    assert column(project.report(), "out_of_order") == [0, 0, 1]
    project.send(step(project, "u1", 2, T + 20))
    project.send(step(project, "u1", 3, T + 30))
    report = project.report()
    assert column(report, "users") == [1, 1, 1]
    assert column(report, "hits") == [1, 1, 2]


def test_a_step_before_step_1_is_out_of_order(project: Project) -> None:
    project.send(step(project, "u1", 2, T))
    project.send(step(project, "u1", 1, T + 10))
    report = project.report()
    assert column(report, "users") == [1, 0]
    assert column(report, "out_of_order") == [0, 1]
    assert column(report, "conversion_from_previous") == [100.0, 0.0]


def test_repeated_steps_are_hits_not_users(project: Project) -> None:
    project.send(step(project, "u1", 1, T), step(project, "u1", 1, T + 5))
    project.send(step(project, "u1", 2, T + 10), step(project, "u1", 2, T + 15))
    project.send(step(project, "u1", 1, T + 20))
    report = project.report()
    assert column(report, "users") == [1, 1]
    assert column(report, "hits") == [3, 2]
    assert column(report, "out_of_order") == [0, 0]


def test_two_users(project: Project) -> None:
    project.send(step(project, "ann", 1, T), step(project, "bob", 1, T + 1))
    project.send(step(project, "ann", 2, T + 100))
    project.send(step(project, "bob", 3, T + 200))
    report = project.report()
    assert column(report, "users") == [2, 1, 0]
    assert column(report, "conversion_from_previous") == [100.0, 50.0, 0.0]
    assert column(report, "conversion_overall") == [100.0, 50.0, 0.0]
    assert column(report, "out_of_order") == [0, 0, 1]


def test_within_one_request_steps_count_in_time_order(project: Project) -> None:
    # mixpanel-browser sends its batches out of tracking order.
    project.send(step(project, "u1", 3, T + 30), step(project, "u1", 1, T), step(project, "u1", 2, T + 10))
    assert column(project.report(), "users") == [1, 1, 1]
    assert column(project.report(), "out_of_order") == [0, 0, 0]


def test_across_requests_arrival_order_counts(project: Project) -> None:
    project.send(step(project, "u1", 2, T + 10))
    project.send(step(project, "u1", 1, T))
    assert column(project.report(), "users") == [1, 0]
    assert column(project.report(), "out_of_order") == [0, 1]


def test_the_conversion_window(redis_server: RedisServer) -> None:
    project = Project(redis_server, window=3600)
    project.send(step(project, "u1", 1, T))
    project.send(step(project, "u1", 2, T + 3600))  # exactly at the window's end: counts
    project.send(step(project, "u1", 3, T + 3601))  # past it
    report = project.report()
    assert column(report, "users") == [1, 1, 0]
    assert column(report, "out_of_order") == [0, 0, 1]
    # After the window a step 1 starts a new attempt, counted again.
    project.send(step(project, "u1", 1, T + 7200))
    project.send(step(project, "u1", 2, T + 7300))
    report = project.report()
    assert column(report, "users") == [2, 2, 0]
    assert column(report, "conversion_from_previous") == [100.0, 100.0, 0.0]


def test_a_goal_conflict_is_counted_and_the_first_goal_kept(project: Project) -> None:
    project.send(step(project, "ann", 1, T, goal="Landing"))
    project.send(step(project, "bob", 1, T + 1, goal="Home page"))
    project.send(step(project, "bob", 2, T + 2, goal="Sign up"))
    report = project.report()
    assert column(report, "goal") == ["Landing", "Sign up"]
    assert column(report, "goal_conflicts") == [1, 0]
    assert column(report, "users") == [2, 1]


def test_date_ranges_select_users_by_their_step_1(project: Project) -> None:
    day1 = D0 + dt.timedelta(days=1)
    project.send(step(project, "late", 1, MIDNIGHT + DAY - 1))  # 23:59:59 on D0
    project.send(step(project, "late", 2, MIDNIGHT + DAY + 30))  # on D0 + 1, still D0's cohort
    project.send(step(project, "early", 1, MIDNIGHT + DAY))  # 00:00:00 on D0 + 1
    assert column(project.report(start=D0), "users") == [1, 1]
    assert column(project.report(start=day1), "users") == [1, 0]
    both = project.report(start=D0, end=day1)
    assert column(both, "users") == [2, 1]
    assert list(both.days) == [D0.isoformat(), day1.isoformat()]
    assert column(both.days[D0.isoformat()], "users") == [1, 1]
    assert column(both.days[day1.isoformat()], "users") == [1, 0]
    assert column(project.report(start=D0 - dt.timedelta(days=1)), "users") == [0, 0]


def test_projects_are_kept_apart(redis_server: RedisServer) -> None:
    a, b = Project(redis_server), Project(redis_server)
    a.send(step(a, "u1", 1, T), step(a, "u1", 2, T + 1))
    b.send(step(b, "u1", 1, T))
    assert column(a.report(), "users") == [1, 1]
    assert column(b.report(), "users") == [1]


def test_a_batch_counted_again_is_counted_once(project: Project) -> None:
    [batch] = project.decode([step(project, "u1", 1, T), step(project, "u1", 2, T + 5)])
    assert send_write(project.client, project.writer, 1, [batch], window=project.window)[-1] == [2, 0]
    # The counting alone again, as the batcher resends it when only the counting failed: counted already.
    assert send_count(project.client, project.writer, 1, [batch], window=project.window) == [0, 0]
    report = project.report()
    assert column(report, "users") == [1, 1]
    assert column(report, "hits") == [1, 1]
    assert project.client.xlen(keys.stream_key(project.token, partition_of("u1"))) == 2


def test_string_steps_and_mp_properties(project: Project) -> None:
    project.send(step(project, "u1", "1", T, mp_lib="web"), step(project, "u1", "2", T + 1, mp_lib="web"))
    assert column(project.report(), "users") == [1, 1]


def test_reports_leave_out_steps_above_the_highest_the_decoder_accepts(project: Project) -> None:
    # Counters of a step far above the cap (kept by a gateway from before it), written as tg_count would.
    assert MAX_FUNNEL_STEP < 1_000_000
    project.send(step(project, "u1", 1, MIDNIGHT + 60))
    goals = keys.funnel_goals_key(project.token, 0, "signup")
    counters = keys.funnel_counters_key(project.token, 0, "signup", D0.isoformat())
    project.client.hset(goals, mapping={"1000000": "g", "t1000000": "1"})
    project.client.hset(counters, mapping={"u1000000": 1, "h1000000": 1})
    report = project.report()
    assert column(report, "step") == [1]
    assert [len(steps) for steps in report.days.values()] == [1]
    assert column(report, "users") == [1]


def test_funnels_are_listed_with_their_steps(project: Project) -> None:
    project.send(step(project, "u1", 1, T, goal="Visit"), step(project, "u1", 2, T + 1, goal="Form"))

    async def read() -> list[Any]:
        async with reader(project.url) as client:
            return list(await list_funnels(client, project.token, PARTITIONS))

    [info] = asyncio.run(read())
    assert info.name == "signup"
    assert [(s.step, s.goal) for s in info.steps] == [(1, "Visit"), (2, "Form")]


def test_event_counts_per_hour_and_unique_users_per_day(project: Project) -> None:
    def event(name: str, user: str, at: float) -> dict[str, Any]:
        return {"event": name, "properties": {"token": project.token, "distinct_id": user, "time": at}}

    project.send(
        event("view", "ann", MIDNIGHT + 10),
        event("view", "ann", MIDNIGHT + 20),
        event("view", "bob", MIDNIGHT + 3600 * 5),
        event("buy", "bob", MIDNIGHT + 3600 * 5 + 1),
        event("view", "cid", MIDNIGHT + DAY + 1),
    )
    daily = project.counts(D0, D0 + dt.timedelta(days=2))
    assert sorted(daily.events) == ["buy", "view"]
    view = daily.events["view"]
    assert view.total == 4
    assert [(p.time, p.count, p.users) for p in view.series] == [
        ("2026-11-20", 3, 2),
        ("2026-11-21", 1, 1),
        ("2026-11-22", 0, 0),
    ]
    hourly = project.counts(D0, D0, unit="hour", event="view")
    assert list(hourly.events) == ["view"]
    points = hourly.events["view"].series
    assert len(points) == 24
    assert {p.time: p.count for p in points if p.count} == {
        "2026-11-20T00:00:00Z": 2,
        "2026-11-20T05:00:00Z": 1,
    }


def test_a_hash_of_one_partition_holds_its_users_state(project: Project) -> None:
    # Per-user state lives in the user's partition: the key layout the README documents.
    project.send(step(project, "u1", 1, T))
    key = keys.funnel_states_key(project.token, partition_of("u1"), "signup")
    assert project.client.hget(key, "u1") == f"{int(T)}:1:{int(T)}".encode()
    other = partition_of("u1") + 1 if partition_of("u1") + 1 < PARTITIONS else 0
    assert not project.client.exists(keys.funnel_states_key(project.token, other, "signup"))
