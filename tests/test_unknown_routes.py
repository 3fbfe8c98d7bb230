"""Paths the gateway does not serve (mixpanel-browser's `/record`, `/flags`, `/settings`, an old SDK's
`/decide`): a 404 that names the route, with CORS headers so that a browser shows it, a preflight that
lets the browser send the request, and a log line per route and minute, in bounded memory. In-process,
over HTTP against a real gateway, with mixpanel-python, and in Chromium."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import threading
from collections.abc import Iterator

import pytest
import requests
from conftest import Gateway, wait_for
from memory_gateway import ORIGIN, Proto, answer, counted, running
from mixpanel import Consumer, Mixpanel, MixpanelException
from playwright.sync_api import Browser
from trackgate.gateway.unknown_routes import LOG_SECONDS, MAX_ROUTES
from trackgate.throttled_log import ThrottledLog

ROUTES = ["/record", "/flags", "/settings", "/decide"]
LOGGER = "trackgate.http"


def lines_about(caplog: pytest.LogCaptureFixture, route: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"no endpoint {route!r}" in r.getMessage()]


# in-process


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_an_unknown_route_is_a_404_that_names_it_with_cors_headers(route: str, method: str) -> None:
    before = counted("requests", route="other", status=404)
    proto = answer(method=method, body=b"{}", headers=(("origin", ORIGIN),), path=route)
    assert proto.status == 404
    assert proto.header("content-type") == "application/json"
    assert json.loads(proto.body) == {"status": 0, "error": f"trackgate has no endpoint {route}"}
    assert proto.header("access-control-allow-origin") == ORIGIN
    assert proto.header("access-control-allow-credentials") == "true"
    assert counted("requests", route="other", status=404) == before + 1


def test_an_origin_not_allowed_gets_the_404_without_cors_headers() -> None:
    headers = (("origin", "https://evil.example"),)
    proto = answer(headers=headers, path="/flags", allowed_origins=(ORIGIN,))
    assert proto.status == 404
    assert proto.header("access-control-allow-origin") is None


def test_a_preflight_to_an_unknown_route_lets_the_browser_send_the_request() -> None:
    headers = (
        ("origin", ORIGIN),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "content-type"),
    )
    proto = answer(method="OPTIONS", headers=headers, path="/record")
    assert (proto.status, proto.body) == (204, b"")
    assert proto.header("access-control-allow-origin") == ORIGIN
    assert proto.header("access-control-allow-credentials") == "true"
    assert proto.header("access-control-allow-methods") == "GET, POST, OPTIONS"
    assert proto.header("access-control-allow-headers") == "content-type"


def test_an_options_request_that_is_no_preflight_is_a_404() -> None:
    assert answer(method="OPTIONS", path="/record").status == 404
    assert answer(method="OPTIONS", headers=(("origin", ORIGIN),), path="/record").status == 404


def test_each_route_is_logged_once_a_minute_saying_how_many_were_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with running() as gateway:
            for _ in range(3):
                await gateway.call("POST", body=b"data=x", path="/record")
            await gateway.call("GET", path="/flags")
            gateway.clock[0] += LOG_SECONDS - 1
            await gateway.call("GET", path="/record")
            gateway.clock[0] += 1
            await gateway.call("GET", path="/record")

    with caplog.at_level(logging.WARNING, LOGGER):
        asyncio.run(scenario())
    first, second = lines_about(caplog, "/record")
    assert "POST from 127.0.0.1:50000" in first
    assert "answered 404" in first
    assert "(and 3 more requests to it since its last line)" in second
    assert len(lines_about(caplog, "/flags")) == 1


def test_a_flood_of_distinct_paths_is_logged_in_bounded_lines(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> list[Proto]:
        async with running() as gateway:
            answers = [await gateway.call("GET", path=f"/x{n}") for n in range(MAX_ROUTES + 500)]
            gateway.clock[0] += LOG_SECONDS
            answers.append(await gateway.call("GET", path="/record"))
            return answers

    with caplog.at_level(logging.WARNING, LOGGER):
        answers = asyncio.run(scenario())
    assert {proto.status for proto in answers} == {404}
    flood = [r for r in caplog.records if "no endpoint '/x" in r.getMessage()]
    # Every route remembered has its line; the others share one line a minute.
    assert len(flood) == MAX_ROUTES + 1
    assert len(lines_about(caplog, "/record")) == 1


def test_a_throttled_log_remembers_at_most_max_keys_kinds() -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("test.throttled")
    logger.addHandler(Collect())
    logger.propagate = False
    now = [0.0]
    log = ThrottledLog(logger, "more", 60.0, lambda: now[0], max_keys=3)
    for n in range(1000):
        log.warning(f"k{n}", "line %d", n)
        assert len(log) <= 3 + 1
    # Three kinds remembered, the rest in one shared line.
    assert lines == ["line 0", "line 1", "line 2", "line 3"]
    now[0] += 60.0
    log.warning("k999", "line %d", 999)
    log.warning("k0", "line %d", 0)
    assert lines[4:] == ["line 999", "line 0"]
    assert len(log) == 2


# over HTTP, against a real gateway


def test_over_http_an_unknown_route_is_a_404_with_cors_and_logged_once(gateway: Gateway) -> None:
    route = "/flags"
    for _ in range(3):
        r = requests.post(
            gateway.url(route + "?mp_lib=web"), data="{}", headers={"origin": ORIGIN}, timeout=10
        )
        assert r.status_code == 404
        assert r.json() == {"status": 0, "error": f"trackgate has no endpoint {route}"}
        assert r.headers["access-control-allow-origin"] == ORIGIN
    preflight = requests.options(
        gateway.url("/record"),
        headers={"origin": ORIGIN, "access-control-request-method": "POST"},
        timeout=10,
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    wait_for(lambda: f"no endpoint {route!r}" in gateway.log(), 10, "the 404 logged")
    assert gateway.log().count(f"no endpoint {route!r}") == 1


def test_mixpanel_python_pointed_at_a_missing_endpoint_says_which(gateway: Gateway, token: str) -> None:
    consumer = Consumer(events_url=gateway.url("/decide"), request_timeout=10)
    with pytest.raises(MixpanelException, match="trackgate has no endpoint /decide"):
        Mixpanel(token, consumer=consumer).track("someone", "signup")


# in a browser


FETCH = """async (url) => {
  const r = await fetch(url, {method: 'POST', credentials: 'include',
                              headers: {'Content-Type': 'application/json'}, body: '{}'});
  return {status: r.status, body: await r.text()};
}"""


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>app</title>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    """A page of a site on another port of the loopback address, as the captured clients' pages were
    (Chromium lets only a page of the loopback address space call it)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(10)


def test_a_browser_sees_the_404_of_a_missing_endpoint_not_a_cors_failure(
    gateway: Gateway, browser: Browser, page_origin: str
) -> None:
    """A cross-origin POST of JSON with credentials: the browser sends a preflight first, then the
    request; the page reads the 404 and its message."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(page_origin + "/")
    seen = page.evaluate(FETCH, gateway.url("/record"))
    context.close()
    assert seen["status"] == 404
    assert json.loads(seen["body"]) == {"status": 0, "error": "trackgate has no endpoint /record"}
