"""The command line refuses bad arguments and settings with a message that names them, exit status 2, and
no traceback; and it changes nothing (no file emptied, no Redis started) before they are known good."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import TRACKGATE, Gateway, RedisServer
from trackgate.bounds import DEFAULT_CAPS
from trackgate.settings import redirect_host


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TRACKGATE_")}
    return subprocess.run(
        [TRACKGATE, *args], capture_output=True, text=True, timeout=60, env={**environ, **(env or {})}
    )


def refused(done: subprocess.CompletedProcess[str], *names: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    for name in names:
        assert name in done.stderr, done.stderr


@pytest.mark.parametrize("days", ["nan", "inf", "-inf", "soon", "1e305", "0", "-2"])
def test_a_funnel_window_that_is_not_a_number_of_days(days: str, tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    refused(run("project", "create", "shop", "--funnel-window-days", days, *data), "--funnel-window-days")
    refused(run("project", "set-funnel-window", "shop", days, *data), "days")
    assert not (tmp_path / "redis.pid").exists()


@pytest.mark.parametrize("url", ["notaurl", "http://example.com", "redis://host:port/0"])
def test_a_redis_url_redis_cannot_use(url: str, tmp_path: Path) -> None:
    refused(run("project", "list", "--redis-url", url), "--redis-url (TRACKGATE_REDIS_URL)", repr(url))
    refused(
        run("serve", "--data-dir", str(tmp_path), env={"TRACKGATE_REDIS_URL": url}),
        "--redis-url (TRACKGATE_REDIS_URL)",
    )
    assert not (tmp_path / "redis.pid").exists()


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("TRACKGATE_MAX_EVENTS", "99999999999999999999", "max_events"),
        ("TRACKGATE_MAX_REQUEST_BYTES", "-5", "--max-request-bytes"),
        ("TRACKGATE_REDIS_TIMEOUT", "inf", "--redis-timeout"),
        ("TRACKGATE_REDIS_TIMEOUT", "nan", "--redis-timeout"),
        ("TRACKGATE_MAX_AGE", "inf", "--max-age"),
        ("TRACKGATE_STREAM_MAXLEN", str(2**63), "--stream-maxlen"),
        ("TRACKGATE_PARTITIONS", "0", "--partitions"),
        ("TRACKGATE_MAX_BODY_BYTES_IN_FLIGHT", "9999999", "expected at least --max-request-bytes"),
    ],
)
def test_a_setting_out_of_range(variable: str, value: str, named: str, tmp_path: Path) -> None:
    refused(run("serve", "--data-dir", str(tmp_path), env={variable: value}), named)
    refused(run("project", "list", "--data-dir", str(tmp_path), env={variable: value}), named)
    assert not (tmp_path / "redis.pid").exists()


def test_a_failed_export_leaves_the_output_file_alone(redis_server: RedisServer, tmp_path: Path) -> None:
    target = tmp_path / "events.jsonl"
    target.write_text("kept\n")
    common = ["--redis-url", redis_server.url, "--output", str(target)]
    refused(run("export", "--project", "demo", "--to", "2026-11-40", *common), "--from/--to")
    refused(run("export", "--project", "no-such-project", *common), "no-such-project")
    assert target.read_text() == "kept\n"


def test_a_port_already_listened_on(gateway: Gateway, tmp_path: Path) -> None:
    # Granian listens with SO_REUSEPORT: a second gateway would share the port and take part of the
    # first one's traffic to its own Redis.
    refused(run("serve", "--port", str(gateway.port), "--data-dir", str(tmp_path)), "cannot listen on")
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        refused(run("serve", "--port", str(port), "--data-dir", str(tmp_path)), f"port {port}")
    assert not (tmp_path / "redis.pid").exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--host", "localhost"], "--host (TRACKGATE_HOST) = 'localhost': expected an IP address"),
        (["--host", "192.0.2.1"], "cannot listen on 192.0.2.1"),
        (["--port", "abc"], "--port (TRACKGATE_PORT) = 'abc': expected an integer"),
        (["--redirect-hosts", "https://shop.example.com"], "must be a host name or address alone"),
        (["--redirect-hosts", "*.example.com"], "must be a host name or address alone"),
    ],
)
def test_serve_refuses_what_it_cannot_listen_or_redirect_with(
    args: list[str], named: str, tmp_path: Path
) -> None:
    refused(run("serve", "--data-dir", str(tmp_path), *args), named)
    assert not (tmp_path / "redis.pid").exists()


def test_a_data_dir_that_cannot_be_one(tmp_path: Path) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("")
    refused(run("serve", "--data-dir", str(afile)), "--data-dir", "File exists")
    refused(run("project", "list", "--data-dir", str(afile / "below")), "--data-dir")


@pytest.mark.parametrize(
    ("entry", "host"),
    [
        ("Shop.Example.com.", "shop.example.com"),
        ("my_shop.example.com", "my_shop.example.com"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("10.0.0.7", "10.0.0.7"),
        ("https://shop.example.com", None),
        ("*.example.com", None),
        ("shop.example.com:8443", None),
        ("", None),
        ("bücher.example", None),
    ],
)
def test_redirect_hosts_as_urls_name_them(entry: str, host: str | None) -> None:
    assert redirect_host(entry) == host


def test_a_host_with_a_zone_is_refused(tmp_path: Path) -> None:
    refused(run("serve", "--host", "fe80::1%lo", "--data-dir", str(tmp_path)), "expected an IP address")


def test_set_caps_changes_the_caps_given_and_list_shows_them(redis_server: RedisServer) -> None:
    name = "caps-" + os.urandom(6).hex()
    url = ["--redis-url", redis_server.url]
    assert run("project", "create", name, *url).returncode == 0
    done = run("project", "set-caps", name, "--funnel-names", "7", *url)
    assert done.returncode == 0, done.stderr
    # The cap not given keeps its value (the default).
    shown = f"  event-names-per-day={DEFAULT_CAPS.event_names_per_day} funnel-names=7  {name}\n"
    assert shown in run("project", "list", *url).stdout
    refused(run("project", "set-caps", name, "--event-names-per-day", "0", *url), "--event-names-per-day")
    refused(run("project", "set-caps", name, "--funnel-names", "many", *url), "--funnel-names")
    assert shown in run("project", "list", *url).stdout
