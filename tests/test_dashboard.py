"""The dashboard in a real browser (Debian's Chromium, driven by Playwright), against a real gateway and
Redis: every number the page shows equals what the query API answers. And the API's 401s.

The events go through /track over HTTP: users moving through a 3-step funnel over two UTC days (with a
repeated step, a skipped step, a step before step 1, a goal conflict, and a step finished the next day), a
second funnel whose name needs URL encoding, and other events at several hours.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import pytest
import requests
from conftest import TRACKGATE, Gateway, RedisServer, create_project_keys, wait_for
from playwright.sync_api import Browser, Page, expect
from trackgate.bounds import OVERFLOW

SIGNUP = "Signup flow"
CHECKOUT = "Checkout / EU & co 100%"  # a slash, an ampersand, a percent sign and spaces in the URL


class Project(NamedTuple):
    token: str
    secret: str


def create_project(redis_url: str) -> Project:
    return Project(*create_project_keys(redis_url, "dashboard-" + uuid.uuid4().hex[:12]))


# The scenario: two whole UTC days before today, so no event is ever in the future whatever the hour.
TODAY = dt.datetime.now(dt.UTC).date()
DAY_A = TODAY - dt.timedelta(days=2)
DAY_B = TODAY - dt.timedelta(days=1)


def at(day: dt.date, hour: int, minute: int = 0, second: int = 0) -> float:
    return dt.datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=dt.UTC).timestamp()


def step(token: str, user: str, when: float, funnel: str, number: int, goal: str) -> dict[str, Any]:
    return {
        "event": "mp_funnel",
        "properties": {
            "token": token,
            "distinct_id": user,
            "time": when,
            "funnel": funnel,
            "step": number,
            "goal": goal,
            "mp_lib": "python",
        },
    }


def other(token: str, user: str, when: float, name: str) -> dict[str, Any]:
    return {"event": name, "properties": {"token": token, "distinct_id": user, "time": when, "mp_lib": "web"}}


def scenario(token: str) -> list[list[dict[str, Any]]]:
    """The requests to send, in order (a user's events across requests count in arrival order)."""
    goals = {1: "Visit", 2: "Form", 3: "Confirm"}

    def s(user: str, day: dt.date, hour: int, minute: int, number: int, goal: str | None = None) -> Any:
        return step(token, user, at(day, hour, minute), SIGNUP, number, goal or goals[number])

    day_a = [
        s("alice", DAY_A, 9, 0, 1),
        s("alice", DAY_A, 9, 1, 1),  # repeated: a hit, not a second user
        s("alice", DAY_A, 9, 5, 2),
        s("alice", DAY_A, 9, 20, 3),
        s("bob", DAY_A, 10, 0, 1),
        s("bob", DAY_A, 10, 7, 2),
        s("carol", DAY_A, 11, 0, 1),
        s("dave", DAY_A, 12, 0, 1),
        s("dave", DAY_A, 12, 30, 3),  # skipped step 2: out of order
        s("erin", DAY_A, 13, 0, 1),
        s("erin", DAY_A, 13, 4, 2, "Form v2"),  # another goal for step 2: a goal conflict
        step(token, "alice", at(DAY_A, 9, 2), CHECKOUT, 1, "Cart"),
        step(token, "alice", at(DAY_A, 9, 2, 40), CHECKOUT, 2, "Pay"),  # 40 s after step 1
        *(
            other(token, u, at(DAY_A, h, 15), "Page view")
            for u, h in [("alice", 9), ("bob", 10), ("bob", 10)]
        ),
        *(other(token, u, at(DAY_A, h, 40), "Page view") for u, h in [("carol", 11), ("zed", 23)]),
        other(token, "alice", at(DAY_A, 9, 30), "Purchase"),
    ]
    day_b = [
        s("bob", DAY_B, 8, 0, 3),  # bob finishes the next day: counted on day A, his day of entry
        s("frank", DAY_B, 9, 0, 1),
        s("frank", DAY_B, 9, 2, 2),
        s("frank", DAY_B, 9, 9, 3),
        s("grace", DAY_B, 14, 0, 1),
        s("grace", DAY_B, 14, 30, 2),
        s("heidi", DAY_B, 15, 0, 2),  # before step 1: out of order
        s("heidi", DAY_B, 15, 1, 1),
        step(token, "frank", at(DAY_B, 9, 30), CHECKOUT, 1, "Cart"),
        *(
            other(token, u, at(DAY_B, h, 5), "Page view")
            for u, h in [("frank", 9), ("grace", 14), ("ivan", 0)]
        ),
        other(token, "frank", at(DAY_B, 9, 45), "Purchase"),
        other(token, "grace", at(DAY_B, 16, 0), "Sign up"),
    ]
    return [day_a, day_b]


def send(gateway: Gateway, events: list[dict[str, Any]]) -> None:
    r = requests.post(gateway.url("/track"), data={"data": json.dumps(events), "verbose": "1"}, timeout=10)
    assert (r.status_code, r.json()) == (200, {"status": 1, "error": None}), r.text


# Fixtures


@pytest.fixture(scope="module")
def dash_gateway(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Events may be up to five days old, so that the scenario can span two whole past days."""
    gw = Gateway(
        tmp_path_factory.mktemp("dashboard"), "--max-age", str(5 * 86400), redis_url=redis_server.url
    )
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def project(dash_gateway: Gateway, redis_server: RedisServer) -> Project:
    created = create_project(redis_server.url)
    for batch in scenario(created.token):
        send(dash_gateway, batch)
    return created


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (empty session storage) whose clock reads local time far from UTC and whose locale
    writes numbers differently from the page's: the page must show UTC days and its own number format."""
    context = browser.new_context(timezone_id="Pacific/Kiritimati", locale="de-DE")
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


# The API, as the test reads it


def api(gateway: Gateway, secret: str, path: str, **params: str) -> Any:
    r = requests.get(gateway.reports_url(path), params=params, auth=(secret, ""), timeout=10)
    assert r.status_code == 200, (path, params, r.status_code, r.text)
    return r.json()


def funnel_path(name: str) -> str:
    return "/api/funnels/" + quote(name, safe="")


# What the page must show: the same formatting rules as the page's script


def fmt_int(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def fmt_percent(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}".rstrip("0").rstrip(".") + "%"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = math.floor(seconds + 0.5)  # JavaScript's Math.round
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


Numbers = dict[str, tuple[str, Any]]


def shown_numbers(page: Page, section: str) -> Numbers:
    """Every number in a section of the page: test id -> (text on screen, exact value)."""
    pairs = page.eval_on_selector_all(
        f"#{section} [data-testid][data-value]",
        "els => els.map(e => [e.dataset.testid, e.textContent.trim(), e.dataset.value])",
    )
    found: Numbers = {}
    for testid, text, value in pairs:
        assert testid not in found, f"two numbers with the test id {testid}"
        found[testid] = (text, json.loads(value))
    return found


def report_numbers(report: dict[str, Any]) -> Numbers:
    expected: Numbers = {}

    def put(testid: str, value: Any, text: str) -> None:
        expected[testid] = (text, value)

    for st in report["steps"]:
        p = f"step-{st['step']}"
        put(f"{p}-users", st["users"], fmt_int(st["users"]))
        put(f"{p}-hits", st["hits"], fmt_int(st["hits"]))
        put(f"{p}-out-of-order", st["out_of_order"], fmt_int(st["out_of_order"]))
        put(f"{p}-goal-conflicts", st["goal_conflicts"], fmt_int(st["goal_conflicts"]))
        put(
            f"{p}-conversion-from-previous",
            st["conversion_from_previous"],
            fmt_percent(st["conversion_from_previous"]),
        )
        put(f"{p}-conversion-overall", st["conversion_overall"], fmt_percent(st["conversion_overall"]))
        put(
            f"{p}-avg-seconds-from-previous",
            st["avg_seconds_from_previous"],
            fmt_duration(st["avg_seconds_from_previous"]),
        )
    for day, steps in report["days"].items():
        if not any(st["users"] or st["hits"] or st["out_of_order"] or st["goal_conflicts"] for st in steps):
            continue  # the page leaves out days without activity
        for st in steps:
            p = f"day-{day}-step-{st['step']}"
            put(f"{p}-users", st["users"], fmt_int(st["users"]))
            put(f"{p}-conversion-overall", st["conversion_overall"], fmt_percent(st["conversion_overall"]))
    return expected


def events_numbers(all_events: dict[str, Any], one: dict[str, Any] | None, event: str) -> Numbers:
    expected: Numbers = {}
    if event:
        assert one is not None
        series = one["events"][event]
        points = series["series"]
        assert series["total"] == sum(p["count"] for p in points)
    else:
        names = list(all_events["events"])
        points = [
            {
                "time": p["time"],
                "count": sum(all_events["events"][n]["series"][i]["count"] for n in names),
                "users": None,
            }
            for i, p in enumerate(all_events["events"][names[0]]["series"])
        ]
    total = sum(p["count"] for p in points)
    expected["series-total"] = (fmt_int(total), total)
    for p in points:
        expected[f"series-{p['time']}-count"] = (fmt_int(p["count"]), p["count"])
        if event and all_events["unit"] == "day":
            expected[f"series-{p['time']}-users"] = (fmt_int(p["users"]), p["users"])
    for name, series in all_events["events"].items():
        expected[f"event-total-{name}"] = (fmt_int(series["total"]), series["total"])
    return expected


# Driving the page


def sign_in(page: Page, gateway: Gateway, secret: str) -> None:
    page.goto(gateway.reports_url("/dashboard"))
    page.get_by_label("API secret").fill(secret)
    page.get_by_role("button", name="Open").click()


def set_range(page: Page, start: dt.date, end: dt.date) -> None:
    page.get_by_label("From (UTC day)").fill(start.isoformat())
    page.get_by_label("To (UTC day)").fill(end.isoformat())


def check_report(
    page: Page, gateway: Gateway, secret: str, name: str, start: str, end: str
) -> dict[str, Any]:
    """Waits for the page's report of `name` over the range, and compares it with the API's."""
    expect(page.locator("#report")).to_have_attribute("data-loaded", f"{name}|{start}|{end}")
    report: dict[str, Any] = api(gateway, secret, funnel_path(name), **{"from": start, "to": end})
    assert page.get_by_test_id("report-funnel").text_content() == name
    assert page.get_by_test_id("report-from").text_content() == report["from"] == start
    assert page.get_by_test_id("report-to").text_content() == report["to"] == end
    assert shown_numbers(page, "report") == report_numbers(report)
    entered = fmt_int(report["steps"][0]["users"])
    expect(page.get_by_role("status")).to_have_text(
        f"Funnel {name}: {entered} users entered from {start} to {end}."
    )
    top = max(1, *(st["users"] for st in report["steps"]))
    for st in report["steps"]:
        item = page.get_by_test_id(f"step-{st['step']}")
        assert item.get_by_test_id(f"step-{st['step']}-goal").text_content() == st["goal"]
        width = item.locator(".bar").evaluate("e => e.style.width")
        assert float(width.removesuffix("%")) == math.floor(st["users"] / top * 1000 + 0.5) / 10
    return report


def check_events(
    page: Page, gateway: Gateway, secret: str, event: str, unit: str, start: str, end: str
) -> None:
    page.get_by_role("combobox", name="Event", exact=True).select_option(event)
    page.get_by_role("combobox", name="Per", exact=True).select_option(unit)
    expect(page.locator("#events")).to_have_attribute("data-loaded", f"{event}|{unit}|{start}|{end}")
    params = {"from": start, "to": end, "unit": unit}
    all_events = api(gateway, secret, "/api/events", **params)
    one = api(gateway, secret, "/api/events", **params, event=event) if event else None
    expected = events_numbers(all_events, one, event)
    assert shown_numbers(page, "events") == expected
    # The chart draws one bar per day or hour, as tall as its count says.
    bars = page.eval_on_selector_all(
        "#chart rect.pt", "els => els.map(e => [e.dataset.time, +e.dataset.count])"
    )
    counts = {
        k.removeprefix("series-").removesuffix("-count"): v[1]
        for k, v in expected.items()
        if k.startswith("series-") and k.endswith("-count")
    }
    assert dict(bars) == counts
    assert (
        len(bars)
        == len(counts)
        == (24 if unit == "hour" else 1)
        * ((dt.date.fromisoformat(end) - dt.date.fromisoformat(start)).days + 1)
    )


# The tests


def test_every_number_on_the_dashboard_is_the_apis(
    page: Page, dash_gateway: Gateway, project: Project
) -> None:
    secret = project.secret
    listed = api(dash_gateway, secret, "/api/funnels")["funnels"]
    assert {f["name"] for f in listed} == {SIGNUP, CHECKOUT}
    today = dt.datetime.now(dt.UTC).date()

    sign_in(page, dash_gateway, secret)
    select = page.get_by_role("combobox", name="Funnel", exact=True)
    expect(select).to_be_visible()
    assert select.locator("option").all_text_contents() == [f["name"] for f in listed]
    # The default range: the last 30 UTC days, the same as the API's own default.
    default_from, default_to = (today - dt.timedelta(days=29)).isoformat(), today.isoformat()
    expect(page.get_by_label("From (UTC day)")).to_have_value(default_from)
    expect(page.get_by_label("To (UTC day)")).to_have_value(default_to)
    first = listed[0]["name"]
    check_report(page, dash_gateway, secret, first, default_from, default_to)
    default_report = api(dash_gateway, secret, funnel_path(first))
    assert (default_report["from"], default_report["to"]) == (default_from, default_to)

    # The 3-step funnel over the scenario's two days, then its second day alone.
    select.select_option(SIGNUP)
    set_range(page, DAY_A, DAY_B)
    a, b = DAY_A.isoformat(), DAY_B.isoformat()
    report = check_report(page, dash_gateway, secret, SIGNUP, a, b)
    # The scenario is not trivial: all the columns are in play (the exact semantics are tested elsewhere).
    assert [st["goal"] for st in report["steps"]] == ["Visit", "Form", "Confirm"]
    assert (report["steps"][0]["users"], report["steps"][0]["hits"]) == (8, 9)
    assert sorted(report["days"]) == [a, b]
    assert sum(st["out_of_order"] for st in report["steps"]) > 0
    assert sum(st["goal_conflicts"] for st in report["steps"]) > 0
    assert report["steps"][2]["users"] > 0
    assert report["steps"][1]["avg_seconds_from_previous"] is not None

    # Event counts over the same range: all events, one event, per day and per hour.
    check_events(page, dash_gateway, secret, "", "day", a, b)
    check_events(page, dash_gateway, secret, "Page view", "hour", a, b)
    check_events(page, dash_gateway, secret, "Sign up", "day", a, b)
    check_events(page, dash_gateway, secret, "", "hour", a, b)
    shown = shown_numbers(page, "events")
    assert shown["event-total-Page view"] == ("8", 8)
    assert shown["series-total"][1] > 0

    set_range(page, DAY_B, DAY_B)
    check_report(page, dash_gateway, secret, SIGNUP, b, b)
    select.select_option(CHECKOUT)
    check_report(page, dash_gateway, secret, CHECKOUT, b, b)
    check_events(page, dash_gateway, secret, "Purchase", "day", b, b)

    # A range in which nobody entered: an empty state, and zeros.
    quiet = DAY_A - dt.timedelta(days=20)
    set_range(page, quiet, quiet)
    check_report(page, dash_gateway, secret, CHECKOUT, quiet.isoformat(), quiet.isoformat())
    expect(page.get_by_test_id("report-empty")).to_contain_text("Nobody entered this funnel")

    # A range that ends before it starts is refused on the page, with a message.
    page.get_by_label("From (UTC day)").fill(today.isoformat())
    expect(page.get_by_test_id("app-error")).to_contain_text("starts after it ends")


def test_a_wrong_secret_shows_an_error_and_the_right_one_is_kept_for_the_tab(
    page: Page, dash_gateway: Gateway, project: Project
) -> None:
    sign_in(page, dash_gateway, project.secret + "x")
    error = page.get_by_test_id("auth-error")
    expect(error).to_contain_text("Wrong API secret")
    expect(error).to_contain_text("401")
    expect(page.locator("#app")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0

    page.get_by_label("API secret").fill(project.secret)
    page.get_by_role("button", name="Open").click()
    expect(page.get_by_role("combobox", name="Funnel", exact=True)).to_be_visible()
    expect(error).to_be_empty()
    # Kept in the tab's session storage: a reload needs no secret.
    page.reload()
    expect(page.locator("#report")).to_have_attribute("data-loaded", re.compile(".+"))
    expect(page.locator("#auth")).to_be_hidden()
    page.get_by_role("button", name="Forget secret").click()
    expect(page.get_by_label("API secret")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0


def test_a_project_without_data_shows_empty_states_and_none_of_the_others_data(
    page: Page, dash_gateway: Gateway, project: Project, redis_server: RedisServer
) -> None:
    empty = create_project(redis_server.url)
    assert api(dash_gateway, empty.secret, "/api/funnels") == {"funnels": []}
    assert api(dash_gateway, empty.secret, "/api/events", **{"from": DAY_A.isoformat()})["events"] == {}
    r = requests.get(dash_gateway.reports_url(funnel_path(SIGNUP)), auth=(empty.secret, ""), timeout=10)
    assert r.status_code == 404
    assert "error" in r.json()

    sign_in(page, dash_gateway, empty.secret)
    expect(page.get_by_test_id("no-funnels")).to_contain_text("no funnels yet")
    expect(page.get_by_test_id("events-empty")).to_contain_text("No events")
    expect(page.get_by_role("combobox", name="Funnel", exact=True)).to_be_disabled()
    assert shown_numbers(page, "events") == {"series-total": ("0", 0)}


ENDPOINTS = ["/api/funnels", funnel_path(SIGNUP), "/api/events"]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("credentials", ["none", "wrong-secret", "bearer", "bad-base64", "empty-basic"])
def test_the_api_answers_401_without_the_secret(
    dash_gateway: Gateway, project: Project, path: str, credentials: str
) -> None:
    authorization = {
        "none": None,
        "wrong-secret": "Basic " + base64.b64encode(b"not-the-secret:").decode(),
        "bearer": "Bearer " + project.secret,
        "bad-base64": "Basic not-base64!",
        "empty-basic": "Basic",
    }[credentials]
    headers = {"Authorization": authorization} if authorization else {}
    r = requests.get(dash_gateway.reports_url(path), headers=headers, timeout=10)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith('Basic realm="trackgate"')
    assert r.headers["content-type"] == "application/json"
    assert isinstance(r.json()["error"], str)
    # The same request with the secret as the user name (any password) is answered.
    ok = requests.get(dash_gateway.reports_url(path), auth=(project.secret, "anything"), timeout=10)
    assert ok.status_code == 200, ok.text


def test_a_project_past_its_caps_shows_a_notice(
    page: Page, dash_gateway: Gateway, redis_server: RedisServer
) -> None:
    """Events past the project's caps on names are counted as the overflow name: the page says so for a
    range that holds some, and not for one that does not."""
    past = create_project(redis_server.url)
    caps = ["--event-names-per-day", "1", "--redis-url", redis_server.url]
    subprocess.run([TRACKGATE, "project", "set-caps", past.token, *caps], check=True, capture_output=True)
    send(dash_gateway, [other(past.token, "alice", at(DAY_A, 9), "Page view")])
    names = iter(range(1_000_000))

    def overflowed() -> bool:
        # One new name a try: the gateway's workers read the caps at their next reload of the projects.
        send(dash_gateway, [other(past.token, "alice", at(DAY_B, 9), f"name {next(names)}")])
        events = api(dash_gateway, past.secret, "/api/events", **{"from": DAY_B.isoformat()})["events"]
        return OVERFLOW in events

    wait_for(overflowed, 30, "a name counted as the overflow name")
    over = api(dash_gateway, past.secret, "/api/events", **{"from": DAY_A.isoformat()})["events"][OVERFLOW]

    sign_in(page, dash_gateway, past.secret)
    set_range(page, DAY_A, TODAY)
    page.get_by_role("button", name="Refresh").click()
    notice = page.get_by_test_id("overflow")
    expect(notice).to_contain_text(f"counted as “{OVERFLOW}”")
    expect(notice).to_contain_text("trackgate project set-caps")
    expect(page.get_by_test_id("overflow-total")).to_have_attribute("data-value", str(over["total"]))
    set_range(page, DAY_A, DAY_A)
    page.get_by_role("button", name="Refresh").click()
    expect(notice).to_be_hidden()


def test_the_page_waits_for_a_busy_worker(
    page: Page, project: Project, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A worker that serves one report at a time answers the page's simultaneous calls 429 but one: the
    page asks again after Retry-After and shows everything."""
    gw = Gateway(tmp_path, "--max-report-requests", "1", "--retry-after", "1", redis_url=redis_server.url)
    gw.start()
    try:
        sign_in(page, gw, project.secret)
        expect(page.locator("#report")).to_have_attribute("data-loaded", re.compile(".+"))
        expect(page.get_by_test_id("event-total-Purchase")).to_be_visible()
        expect(page.get_by_test_id("app-error")).to_be_empty()
        assert "429" not in page.locator("#app").inner_text()
    finally:
        gw.stop()


# Property names and values that would run script or inject markup if the page ever wrote them as HTML.
HOSTILE: dict[str, Any] = {
    "<img src=x onerror=window.__injected=1>": "<script>window.__injected=2</script>",
    "plan": "<b>pro</b> & co",
    "__proto__": {"polluted": True},
    "quote\"'": "'; window.__injected=3; '",
    "n": 3,
    "seats": 2.5,
    "list": [1, "two", None, "<i>x</i>"],
    "nested": {"a": {"b": True}},
    "empty": "",
    "unicode": "héllo ✓ 日本語",
}


def profile_loaded(group_key: str, distinct_id: str) -> str:
    """The `data-loaded` of the profile section once it shows that profile (JSON.stringify's text)."""
    return json.dumps([group_key, distinct_id], separators=(",", ":"), ensure_ascii=False)


def profile_rows(page: Page) -> dict[str, Any]:
    """The profile table on the page: property name -> value (its JSON in data-value), each checked to
    read on screen as the page writes it (text as is, other values as JSON)."""
    rows = page.eval_on_selector_all(
        "#profiles [data-testid=profile-property]",
        "rows => rows.map(r => [r.dataset.name, r.dataset.value, r.querySelector('th').textContent,"
        " r.querySelector('td').textContent])",
    )
    found: dict[str, Any] = {}
    for name, value, shown_name, shown_value in rows:
        assert name not in found
        assert shown_name == name
        parsed = json.loads(value)
        assert shown_value == (
            parsed if isinstance(parsed, str) else json.dumps(parsed, separators=(",", ":"))
        )
        found[name] = parsed
    return found


def test_a_profile_looked_up_by_distinct_id_and_by_group(
    page: Page, dash_gateway: Gateway, redis_server: RedisServer
) -> None:
    """The page shows the Engage Query API's profile of a person, and of a group, property by property;
    names and values are user data and stay text."""
    looked_up = create_project(redis_server.url)
    person = "alice <script>window.__injected=4</script>"
    updates = [{"$token": looked_up.token, "$distinct_id": person, "$set": HOSTILE}]
    r = requests.post(
        dash_gateway.url("/engage"), data={"data": json.dumps(updates), "verbose": "1"}, timeout=10
    )
    assert r.json() == {"status": 1, "error": None}, r.text
    group = {
        "$token": looked_up.token,
        "$group_key": "company <b>",
        "$group_id": "acme & co",
        "$set": {"seats": 40},
    }
    r = requests.post(
        dash_gateway.url("/groups"), data={"data": json.dumps(group), "verbose": "1"}, timeout=10
    )
    assert r.json() == {"status": 1, "error": None}, r.text

    sign_in(page, dash_gateway, looked_up.secret)
    page.get_by_label("Distinct ID (or group ID)").fill(person)
    page.get_by_role("button", name="Look up").click()
    expect(page.locator("#profiles")).to_have_attribute("data-loaded", profile_loaded("", person))
    [api_profile] = api(dash_gateway, looked_up.secret, "/api/2.0/engage", distinct_id=person)["results"]
    shown = profile_rows(page)
    assert shown == api_profile["$properties"]
    assert shown.pop("$last_seen").startswith("20")
    assert shown == HOSTILE
    expect(page.get_by_test_id("profile-who")).to_contain_text(person)
    # Nothing ran, nothing became markup.
    assert page.evaluate("window.__injected") is None
    assert page.evaluate("({}).polluted") is None
    assert page.locator("#profiles img, #profiles script, #profiles b, #profiles i").count() == 0

    # A group's profile, by its key and id.
    page.get_by_label("Group key (empty for a person)").fill("company <b>")
    page.get_by_label("Distinct ID (or group ID)").fill("acme & co")
    page.get_by_role("button", name="Look up").click()
    expect(page.locator("#profiles")).to_have_attribute(
        "data-loaded", profile_loaded("company <b>", "acme & co")
    )
    shown = profile_rows(page)
    assert shown.pop("$last_seen").startswith("20")
    assert shown == {"seats": 40}

    # No such profile: said so, naming the id as typed.
    page.get_by_label("Group key (empty for a person)").fill("")
    page.get_by_label("Distinct ID (or group ID)").fill("nobody <img src=x onerror=window.__injected=5>")
    page.get_by_role("button", name="Look up").click()
    expect(page.get_by_test_id("profile-empty")).to_contain_text("nobody <img src=x")
    assert page.locator("#profiles [data-testid=profile-property]").count() == 0
    assert page.evaluate("window.__injected") is None

    # Another project's secret in the same tab shows none of this project's profile.
    page.get_by_label("Distinct ID (or group ID)").fill(person)
    page.get_by_role("button", name="Look up").click()
    expect(page.get_by_test_id("profile-who")).to_be_visible()
    page.get_by_role("button", name="Forget secret").click()
    other = create_project(redis_server.url)
    page.get_by_label("API secret").fill(other.secret)
    page.get_by_role("button", name="Open").click()
    expect(page.get_by_role("combobox", name="Funnel", exact=True)).to_be_visible()
    assert page.locator("#profile-body").inner_text() == ""
    page.get_by_label("Distinct ID (or group ID)").fill(person)
    page.get_by_role("button", name="Look up").click()
    expect(page.get_by_test_id("profile-empty")).to_be_visible()
