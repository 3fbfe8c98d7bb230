"""The query API and the CLI reports over HTTP, against a real gateway and redis-server: a generated
population sent through /track, and the API's numbers checked against a plain Python computation."""

from __future__ import annotations

import datetime as dt
import json
import random
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from conftest import TRACKGATE, Gateway, RedisServer, create_project_keys

DAY = 86400
FUNNEL = "checkout"
GOALS = {1: "View product", 2: "Add to cart", 3: "Pay", 4: "Receipt"}
# Users enter over five days starting nine days ago and take up to 60 hours more: every event is in the
# past (the gateway would set future times to the receive time) and within the gateway's --max-age.
START = (dt.datetime.now(dt.UTC) - dt.timedelta(days=9)).date()
START_TS = dt.datetime(START.year, START.month, START.day, tzinfo=dt.UTC).timestamp()
END = START + dt.timedelta(days=8)
RANGE = {"from": str(START), "to": str(END)}


@pytest.fixture(scope="module")
def api_gateway(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Events up to ten days old are accepted, so that a population can span several days."""
    gw = Gateway(tmp_path_factory.mktemp("api"), "--max-age", str(10 * DAY), redis_url=redis_server.url)
    gw.start()
    yield gw
    gw.stop()


def mp_funnel(token: str, user: str, step: int, at: float, goal: str | None = None) -> dict[str, Any]:
    properties = {"token": token, "distinct_id": user, "time": at, "funnel": FUNNEL, "step": step}
    return {"event": "mp_funnel", "properties": {**properties, "goal": goal or GOALS[step]}}


def population(token: str, users: int, seed: int) -> list[dict[str, Any]]:
    """Users entering over five days who go some way through the funnel, with repeats, skipped and
    early steps, the odd wrong goal, and other events in between."""
    rng = random.Random(seed)
    events = []
    for u in range(users):
        user = f"user-{seed}-{u}"
        at = START_TS + rng.uniform(60, 5 * DAY)
        reach = rng.choices([1, 2, 3, 4], weights=[40, 30, 20, 10])[0]
        if rng.random() < 0.05:  # a step before step 1: out of order
            events.append(mp_funnel(token, user, rng.randint(2, 4), at - 30))
        for step in range(1, reach + 1):
            if step > 1 and rng.random() < 0.05:  # skips this step: what follows is out of order
                continue
            goal = "Landing" if step == 1 and rng.random() < 0.02 else None
            events.append(mp_funnel(token, user, step, at, goal))
            if rng.random() < 0.1:  # a repeat
                events.append(mp_funnel(token, user, step, at + 1))
            events.append(
                {"event": "page view", "properties": {"token": token, "distinct_id": user, "time": at}}
            )
            at += rng.uniform(10, 20 * 3600)
    events.sort(key=lambda e: e["properties"]["time"])
    return events


def expected_report(events: list[dict[str, Any]], window: float = 30 * DAY) -> dict[int, Counter[str]]:
    """The funnel's counters, computed plainly from the events in the order they are sent."""
    state: dict[str, tuple[int, int, int]] = {}
    first_goal: dict[int, str] = {}
    totals: dict[int, Counter[str]] = defaultdict(Counter)
    for event in events:
        if event["event"] != "mp_funnel":
            continue
        p = event["properties"]
        user, step, at, goal = p["distinct_id"], p["step"], int(p["time"]), p["goal"]
        first_goal.setdefault(step, goal)
        c = totals[step]
        c["hits"] += 1
        c["goal_conflicts"] += goal != first_goal[step]
        attempt = state.get(user)
        if attempt is not None and at - attempt[0] > window:
            attempt = None
        if step == 1:
            if attempt is None:
                state[user] = (at, 1, at)
                c["users"] += 1
        elif attempt is not None and attempt[1] == step - 1:
            state[user] = (attempt[0], step, at)
            c["users"] += 1
            c["seconds"] += at - attempt[2]
        elif not (attempt is not None and attempt[1] >= step):
            c["out_of_order"] += 1
    return totals


def send(http: requests.Session, gw: Gateway, events: list[dict[str, Any]]) -> None:
    for i in range(0, len(events), 50):
        r = http.post(gw.url("/track?verbose=1"), data={"data": json.dumps(events[i : i + 50])})
        assert r.json() == {"status": 1, "error": None}, r.text


@pytest.fixture(scope="module")
def loaded(api_gateway: Gateway, redis_server: RedisServer) -> tuple[Gateway, str, str, list[dict[str, Any]]]:
    token, secret = create_project_keys(redis_server.url, "population")
    events = population(token, users=2500, seed=7)
    with requests.Session() as http:
        send(http, api_gateway, events)
    return api_gateway, token, secret, events


def api(gw: Gateway, path: str, secret: str | None, **params: str) -> requests.Response:
    auth = (secret, "") if secret is not None else None
    return requests.get(gw.reports_url(path), params=params, auth=auth, timeout=30)


def test_the_funnel_report_equals_a_plain_computation(loaded: tuple[Gateway, str, str, list[Any]]) -> None:
    gw, _, secret, events = loaded
    report = api(gw, f"/api/funnels/{FUNNEL}", secret, **RANGE)
    assert report.status_code == 200, report.text
    body = report.json()
    want = expected_report(events)
    assert [s["step"] for s in body["steps"]] == [1, 2, 3, 4]
    assert [s["goal"] for s in body["steps"]] == [GOALS[n] for n in range(1, 5)]
    for s in body["steps"]:
        c = want[s["step"]]
        assert (s["users"], s["hits"], s["out_of_order"], s["goal_conflicts"]) == (
            c["users"],
            c["hits"],
            c["out_of_order"],
            c["goal_conflicts"],
        ), f"step {s['step']}"
        if s["step"] > 1:
            assert s["avg_seconds_from_previous"] == round(c["seconds"] / c["users"], 2)
            previous = want[s["step"] - 1]["users"]
            assert s["conversion_from_previous"] == round(100 * c["users"] / previous, 2)
        assert s["conversion_overall"] == round(100 * c["users"] / want[1]["users"], 2)
    # The population exercises every counter.
    assert want[4]["users"] > 100
    assert want[2]["out_of_order"] > 0
    assert want[1]["goal_conflicts"] > 0
    # Per day of entry, the same steps; the days add up to the whole.
    assert sum(day[0]["users"] for day in body["days"].values()) == want[1]["users"]
    assert sum(day[3]["hits"] for day in body["days"].values()) == want[4]["hits"]


def test_a_date_range_selects_users_by_the_day_of_their_step_1(
    loaded: tuple[Gateway, str, str, list[Any]],
) -> None:
    gw, _, secret, events = loaded
    day = START + dt.timedelta(days=2)
    body = api(gw, f"/api/funnels/{FUNNEL}", secret, **{"from": str(day), "to": str(day)}).json()
    whole = api(gw, f"/api/funnels/{FUNNEL}", secret, **RANGE)
    assert body["days"][str(day)] == whole.json()["days"][str(day)]
    assert body["steps"] == body["days"][str(day)]
    entered = {
        e["properties"]["distinct_id"]
        for e in events
        if e["event"] == "mp_funnel"
        and e["properties"]["step"] == 1
        and dt.datetime.fromtimestamp(e["properties"]["time"], dt.UTC).date() == day
    }
    assert body["steps"][0]["users"] <= len(entered)
    assert body["steps"][0]["users"] > 0


def test_event_counts(loaded: tuple[Gateway, str, str, list[Any]]) -> None:
    gw, _, secret, events = loaded
    r = api(gw, "/api/events", secret, **RANGE, unit="day")
    assert r.status_code == 200, r.text
    body = r.json()
    assert sorted(body["events"]) == ["mp_funnel", "page view"]
    want: Counter[tuple[str, str]] = Counter()
    users: dict[tuple[str, str], set[str]] = defaultdict(set)
    for e in events:
        day = str(dt.datetime.fromtimestamp(e["properties"]["time"], dt.UTC).date())
        want[(e["event"], day)] += 1
        users[(e["event"], day)].add(e["properties"]["distinct_id"])
    for name, series in body["events"].items():
        assert len(series["series"]) == 9
        assert series["total"] == sum(n for (event, _), n in want.items() if event == name)
        for point in series["series"]:
            assert point["count"] == want[(name, point["time"])]
            exact = len(users[(name, point["time"])])
            assert abs(point["users"] - exact) <= max(2, exact * 0.03)  # HyperLogLog: ~0.8% error
    one_day = {"from": str(START), "to": str(START)}
    hourly = api(gw, "/api/events", secret, **one_day, unit="hour", event="page view")
    points = hourly.json()["events"]["page view"]["series"]
    assert len(points) == 24
    assert sum(p["count"] for p in points) == want[("page view", str(START))]


def test_event_names_are_listed_a_page_at_a_time(loaded: tuple[Gateway, str, str, list[Any]]) -> None:
    gw, _, secret, _ = loaded
    first = api(gw, "/api/events", secret, **RANGE, limit="1").json()
    assert list(first["events"]) == ["mp_funnel"]
    assert (first["total_names"], first["truncated"], first["next_offset"]) == (2, True, 1)
    rest = api(gw, "/api/events", secret, **RANGE, limit="1", offset=str(first["next_offset"])).json()
    assert list(rest["events"]) == ["page view"]
    assert rest["next_offset"] is None
    every = api(gw, "/api/events", secret, **RANGE).json()
    assert (every["total_names"], every["truncated"], every["next_offset"]) == (2, False, None)
    assert every["events"] == {**first["events"], **rest["events"]}
    for name, value in (("limit", "0"), ("limit", "1001"), ("offset", "-1"), ("limit", "ten")):
        r = api(gw, "/api/events", secret, **{name: value})
        assert (r.status_code, r.json()["error"].split(":")[0]) == (400, name)


def test_export_streams_the_raw_events(loaded: tuple[Gateway, str, str, list[Any]]) -> None:
    gw, _, secret, events = loaded
    day = START + dt.timedelta(days=1)
    params = {"from": str(day), "to": str(day)}
    r = requests.get(gw.reports_url("/api/export"), params=params, auth=(secret, ""), stream=True, timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in r.iter_lines() if line]
    in_day = [e for e in events if dt.datetime.fromtimestamp(e["properties"]["time"], dt.UTC).date() == day]
    assert len(lines) == len(in_day) > 0
    assert Counter(e["properties"]["distinct_id"] for e in lines) == Counter(
        e["properties"]["distinct_id"] for e in in_day
    )


def test_the_api_needs_the_projects_secret(
    loaded: tuple[Gateway, str, str, list[Any]], redis_server: RedisServer
) -> None:
    gw, _, _, _ = loaded
    for secret in (None, "not-a-secret"):
        r = api(gw, "/api/funnels", secret)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Basic")
        assert "secret" in r.json()["error"]
    # Another project's secret reads that project only: it has no funnel named like the first one's.
    _, other_secret = create_project_keys(redis_server.url, "someone-else")
    assert api(gw, "/api/funnels", other_secret).json() == {"funnels": []}
    assert api(gw, f"/api/funnels/{FUNNEL}", other_secret).status_code == 404
    assert api(gw, "/api/export", other_secret).text == ""


def test_bad_parameters_are_named(loaded: tuple[Gateway, str, str, list[Any]]) -> None:
    gw, _, secret, _ = loaded
    r = api(gw, f"/api/funnels/{FUNNEL}", secret, **{"from": "yesterday"})
    assert (r.status_code, r.json()["error"].split(":")[0]) == (400, "from")
    r = api(gw, "/api/events", secret, unit="week")
    assert (r.status_code, r.json()["error"].split(":")[0]) == (400, "unit")
    r = api(gw, "/api/events", secret, **{"from": "2026-01-02", "to": "2026-01-01"})
    assert r.status_code == 400
    assert requests.post(gw.reports_url("/api/funnels"), auth=(secret, ""), timeout=10).status_code == 405
    r = api(gw, "/api/events", secret, **{f"p{i}": "1" for i in range(25)})
    assert r.status_code == 400
    assert "parameters" in r.json()["error"]


def test_the_cli_report_and_export(
    loaded: tuple[Gateway, str, str, list[Any]], redis_server: RedisServer, tmp_path: Path
) -> None:
    _, token, secret, events = loaded
    common = [
        "--project",
        "population",
        "--from",
        str(START),
        "--to",
        str(END),
        "--redis-url",
        redis_server.url,
    ]
    out = subprocess.run(
        [TRACKGATE, "funnels", "report", FUNNEL, *common], capture_output=True, text=True, check=True
    ).stdout
    want = expected_report(events)
    lines = out.splitlines()
    assert lines[0].startswith(f"funnel {FUNNEL!r}")
    for n in range(1, 5):
        row = next(line for line in lines if line.split()[:1] == [str(n)])
        assert str(want[n]["users"]) in row.split()
        assert GOALS[n] in row
    as_json = subprocess.run(
        [TRACKGATE, "funnels", "report", FUNNEL, "--json", *common],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(as_json) == api(loaded[0], f"/api/funnels/{FUNNEL}", secret, **RANGE).json()
    target = tmp_path / "events.jsonl"
    done = subprocess.run(
        [TRACKGATE, "export", "--output", str(target), *common], capture_output=True, text=True, check=True
    )
    exported = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(exported) == len(events)
    assert {e["token"] for e in exported} == {token}
    assert f"{len(events)} events" in done.stderr
    assert "export" in done.stderr  # the progress bar


def test_funnel_names_are_taken_as_sent(
    loaded: tuple[Gateway, str, str, list[Any]], redis_server: RedisServer
) -> None:
    gw, _, _, _ = loaded
    token, secret = create_project_keys(redis_server.url, "odd-names")
    names = ["x%41", "trail/", "Checkout / EU & co 100%"]
    at = START_TS + 3600
    with requests.Session() as http:
        send(
            http,
            gw,
            [
                {
                    **mp_funnel(token, "u", 1, at),
                    "properties": {**mp_funnel(token, "u", 1, at)["properties"], "funnel": name},
                }
                for name in names
            ],
        )
    listed = api(gw, "/api/funnels", secret).json()["funnels"]
    assert sorted(f["name"] for f in listed) == sorted(names)
    for name in names:
        r = api(gw, f"/api/funnels/{quote(name, safe='')}", secret, **RANGE)
        assert r.status_code == 200, (name, r.text)
        assert r.json()["funnel"] == name
        assert r.json()["steps"][0]["users"] == 1
