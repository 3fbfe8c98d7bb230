"""Every setting of the gateway, in one frozen struct built once from defaults, TRACKGATE_* variables and
command-line flags (in that order of precedence).

This is the only module that reads the environment. `trackgate serve` hands the final settings to its
Granian workers through one variable (`WORKER_SETTINGS_VAR`), because workers are separate processes
that may be spawned rather than forked.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, get_args, get_origin

import msgspec

from trackgate import bounds, redis_target
from trackgate._native import RULES, Options
from trackgate.durability import LEVELS, LOCAL_LEVEL, Durability

ENV_PREFIX = "TRACKGATE_"
WORKER_SETTINGS_VAR = "TRACKGATE__WORKER_SETTINGS"
# prometheus-client's own variable: it switches the library into multi-process mode at import time.
METRICS_DIR_VAR = "PROMETHEUS_MULTIPROC_DIR"

# The decoder's rules are the decoder's business: their defaults, bounds and help texts are read from it.
_RULES = {rule.name: rule for rule in RULES}
_DEFAULTS = Options()


def _doc(text: str, **constraints: Any) -> msgspec.Meta:
    return msgspec.Meta(description=text, **constraints)


def _rule(name: str) -> msgspec.Meta:
    rule = _RULES[name]
    return _doc(rule.help, ge=rule.minimum, le=rule.maximum)


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The gateway's configuration. Field descriptions double as `--help` texts."""

    # Serving
    host: Annotated[str, _doc("address to listen on")] = "127.0.0.1"
    port: Annotated[int, _doc("TCP port to listen on", ge=0, le=65535)] = 8000
    workers: Annotated[int, _doc("Granian worker processes", ge=1, le=256)] = 1
    runtime_threads: Annotated[int, _doc("Granian runtime threads per worker", ge=1, le=64)] = 1
    runtime_mode: Annotated[
        str, _doc("Granian runtime mode: st (single-threaded) or mt", pattern="^(st|mt)$")
    ] = "st"
    event_loop: Annotated[
        str, _doc("event loop of the workers: uvloop or asyncio", pattern="^(asyncio|uvloop)$")
    ] = "uvloop"
    task_impl: Annotated[
        str, _doc("Granian's task implementation for requests: asyncio or rust", pattern="^(asyncio|rust)$")
    ] = "asyncio"
    backpressure: Annotated[
        int,
        _doc(
            "requests a worker handles concurrently before Granian queues connections (0: Granian's)",
            ge=0,
            le=1_000_000,
        ),
    ] = 0
    log_level: Annotated[
        str, _doc("log level: debug, info, warning or error", pattern="^(debug|info|warning|error)$")
    ] = "info"

    # Redis
    redis_url: Annotated[
        str | None,
        _doc(
            "Redis to write to: one (redis://, rediss://, unix://), a Cluster (redis+cluster://host:port,..)"
            " or Sentinel's primary (redis+sentinel://host:port,../service); none: a private redis-server"
        ),
    ] = None
    data_dir: Annotated[str, _doc("directory of the private redis-server's data and of runtime files")] = (
        ".trackgate"
    )
    redis_timeout: Annotated[
        float, _doc("seconds a batch write may take before its connection counts as lost", gt=0, le=3600)
    ] = 3.0
    retry_window: Annotated[
        float,
        _doc("seconds a batch whose write failed is retried before its requests get 503", ge=0, le=3600),
    ] = 2.0
    retry_after: Annotated[int, _doc("Retry-After seconds sent with 503 answers", ge=0, le=86400)] = 2
    durability: Annotated[
        str,
        _doc(
            f"when a write is answered: {LEVELS}; local: once the primary applied it, replicas=N: once N "
            "replicas have it (Redis WAIT), else 503"
        ),
    ] = LOCAL_LEVEL
    durability_timeout: Annotated[
        int,
        _doc(
            "ms a write waits for --durability's replicas before its requests get 503 (below "
            "--redis-timeout)",
            ge=1,
            le=3_600_000,
        ),
    ] = 1000

    # Group commit
    # Up to `pipeline_depth` flushes are in flight per worker; events arriving meanwhile form the next
    # one, so flushes grow with load by themselves. A linger trades latency for fewer, larger writes at
    # moderate load.
    batch_max_events: Annotated[
        int, _doc("a worker writes its pending events once this many are waiting", ge=1, le=1_000_000)
    ] = 2000
    batch_linger_ms: Annotated[
        float,
        _doc(
            "... or once the oldest has waited this many ms (0: at once, when the pipeline has room)",
            ge=0,
            le=10_000,
        ),
    ] = 0.0
    pipeline_depth: Annotated[
        int, _doc("flushes a worker has in flight to Redis at once, on its one connection", ge=1, le=64)
    ] = 4
    max_pending_events: Annotated[
        int,
        _doc("events a worker holds unwritten before it answers 503 (back-pressure)", ge=1, le=100_000_000),
    ] = 100_000

    # Streams
    stream_maxlen: Annotated[
        int,
        _doc(
            "trim each partition's stream to about this many entries (0: no length limit)", ge=0, le=2**63 - 1
        ),
    ] = 1_000_000
    stream_max_age: Annotated[
        float, _doc("also trim entries older than this many seconds (0: no age limit)", ge=0)
    ] = bounds.DEFAULT_STREAM_MAX_AGE
    counter_retention_days: Annotated[
        int, _doc("days a day's event counts, unique users and funnel counters are kept", ge=1, le=36600)
    ] = bounds.DEFAULT_COUNTER_RETENTION_DAYS

    # HTTP
    body_timeout: Annotated[
        float,
        _doc(
            "seconds a request's body may take to arrive before the answer is 408 (Granian times out "
            "headers after 30 s)",
            gt=0,
            le=3600,
        ),
    ] = 10.0
    max_body_bytes_in_flight: Annotated[
        int,
        _doc(
            "bytes of request bodies a worker holds at once; a request past them is answered 503 before "
            "its body is read (at least --max-request-bytes)",
            ge=1,
        ),
    ] = 64 * 1024 * 1024
    allowed_origins: Annotated[
        tuple[str, ...], _doc("CORS origins allowed to send events with credentials (*: any)")
    ] = ("*",)
    redirect_hosts: Annotated[tuple[str, ...], _doc("hosts that `redirect=URL` may send browsers to")] = ()
    trusted_proxies: Annotated[
        tuple[str, ...], _doc("addresses or networks of proxies whose X-Forwarded-For is believed")
    ] = ()
    token_refresh: Annotated[float, _doc("seconds between reloads of the project list", gt=0, le=86400)] = 5.0

    # Reports (the query API): each one bounded, so that reads cannot crowd out the writes.
    reports_port: Annotated[
        int,
        _doc(
            "TCP port of the query API and the dashboard, served by a process of their own (0: --port + 1)",
            ge=0,
            le=65535,
        ),
    ] = 0
    reports_niceness: Annotated[
        int,
        _doc(
            "how much lower the reports process's CPU priority is than the ingestion workers' (nice)",
            ge=0,
            le=19,
        ),
    ] = 19
    report_redis_share: Annotated[
        float,
        _doc(
            "the share of Redis's time the reports' reads may take on average, and the exports' as much "
            "again: past it they wait, and ingestion's writes are not kept waiting",
            gt=0,
            le=1,
        ),
    ] = 0.1
    max_report_requests: Annotated[
        int,
        _doc(
            "query API requests a worker serves at once (a dashboard load sends 3); more are answered 429",
            ge=1,
            le=1000,
        ),
    ] = 4
    max_exports: Annotated[
        int, _doc("exports a worker streams at once; more are answered 429", ge=1, le=1000)
    ] = 2
    max_report_reads: Annotated[
        int,
        _doc("Redis keys one report may read (days x names x partitions); more is refused with 400", ge=1),
    ] = 250_000

    # Decoding rules (see the README's table): the decoder's own defaults, bounds and help texts.
    partitions: Annotated[int, _rule("partitions")] = _DEFAULTS.partitions
    max_age: Annotated[float, _rule("max_age")] = _DEFAULTS.max_age
    max_future_skew: Annotated[float, _rule("max_future_skew")] = _DEFAULTS.max_future_skew
    max_event_name_chars: Annotated[int, _rule("max_event_name_chars")] = _DEFAULTS.max_event_name_chars
    max_distinct_id_chars: Annotated[int, _rule("max_distinct_id_chars")] = _DEFAULTS.max_distinct_id_chars
    max_properties: Annotated[int, _rule("max_properties")] = _DEFAULTS.max_properties
    max_depth: Annotated[int, _rule("max_depth")] = _DEFAULTS.max_depth
    max_array_len: Annotated[int, _rule("max_array_len")] = _DEFAULTS.max_array_len
    max_event_bytes: Annotated[int, _rule("max_event_bytes")] = _DEFAULTS.max_event_bytes
    max_request_bytes: Annotated[int, _rule("max_request_bytes")] = _DEFAULTS.max_request_bytes
    max_events: Annotated[int, _rule("max_events")] = _DEFAULTS.max_events
    dedup_window: Annotated[int, _rule("dedup_window")] = _DEFAULTS.dedup_window

    @property
    def reports_listen_port(self) -> int:
        """The port the reports process listens on."""
        return self.reports_port or self.port + 1

    def write_durability(self) -> Durability:
        return Durability.parse(self.durability, self.durability_timeout)

    def decoder_options(self) -> Options:
        return Options(**{name: getattr(self, name) for name in _RULES})


class SettingsError(ValueError):
    """A flag or variable has a value the gateway cannot use."""


_FIELDS = msgspec.structs.fields(Settings)


def _base_type(annotation: Any) -> Any:
    """`Annotated[int, ...]` -> int; `str | None` -> str; `tuple[str, ...]` -> tuple."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is tuple:
        return tuple
    args = [a for a in get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def _help(annotation: Any) -> str:
    for extra in get_args(annotation)[1:] if get_origin(annotation) is Annotated else ():
        if isinstance(extra, msgspec.Meta) and extra.description:
            return extra.description
    return ""


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--flag-name` per setting; the default is None so that only given flags override."""
    group = parser.add_argument_group("settings (each also as a TRACKGATE_<NAME> variable)")
    for field in _FIELDS:
        base = _base_type(field.type)
        flag = "--" + field.name.replace("_", "-")
        default = field.default
        shown = ",".join(default) if isinstance(default, tuple) else default
        text = f"{_help(field.type)} (default: {shown})"
        if base is tuple:
            group.add_argument(
                flag, dest=field.name, default=None, metavar="A,B", help=text + "; comma-separated"
            )
        else:
            group.add_argument(flag, dest=field.name, default=None, metavar=field.name.upper(), help=text)


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    names = {field.name for field in _FIELDS}
    values: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == WORKER_SETTINGS_VAR:
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in names:
            # A typo in a variable name must not silently fall back to a default.
            raise SettingsError(f"unknown setting {key}; see `trackgate serve --help`")
        values[name] = value
    return values


def build(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then TRACKGATE_* variables, then flags given on the command line."""
    values = _from_environment(os.environ if environ is None else environ)
    if args is not None:
        for field in _FIELDS:
            given = getattr(args, field.name, None)
            if given is not None:
                values[field.name] = given
    for field in _FIELDS:
        if field.name in values and _base_type(field.type) is tuple and isinstance(values[field.name], str):
            values[field.name] = _split_list(values[field.name])
    try:
        settings = msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as err:
        raise SettingsError(_explain(err, values)) from None
    _check(settings)
    return settings


# A host name as a URL's host part holds it: no scheme, port, path or wildcard.
_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def redirect_host(host: str) -> str | None:
    """A --redirect-hosts entry as `urlsplit(url).hostname` gives it (lower case, an IPv6 address without
    its brackets, no trailing dot), or None when no URL's host could ever be it."""
    bare = host.strip().lower()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    bare = bare.rstrip(".")
    return bare if bare and _HOST_NAME.fullmatch(bare) else None


_TYPE_WORDS = {"`int`": "an integer", "`float`": "a number", "`str`": "text"}


def _explain(err: msgspec.ValidationError, values: Mapping[str, Any]) -> str:
    """msgspec says "Expected `int` >= 1 - at `$.workers`"; say it in the user's terms."""
    text = str(err)
    found = re.search(r" - at `\$\.(\w+)", text)
    if found is None:
        return text
    name = found.group(1)
    detail = text[: found.start()]
    # "Expected `int`, got `str`" is msgspec's way of saying that the value is not an integer.
    if detail.startswith("Expected ") and ", got `str`" in detail:
        wanted = detail.removeprefix("Expected ").split(",")[0]
        detail = f"expected {_TYPE_WORDS.get(wanted, wanted)}"
    return f"{_flag(name)} = {values.get(name)!r}: {detail[:1].lower()}{detail[1:]}"


def _flag(name: str) -> str:
    """A setting as the user gives it: `--redis-url (TRACKGATE_REDIS_URL)`."""
    return f"--{name.replace('_', '-')} ({ENV_PREFIX}{name.upper()})"


def _check(settings: Settings) -> None:
    try:
        address = ipaddress.ip_address(settings.host)
    except ValueError:
        address = None
    # Granian reads the host as a Rust IpAddr, which has no zone (fe80::1%eth0).
    if address is None or getattr(address, "scope_id", None):
        raise SettingsError(
            f"{_flag('host')} = {settings.host!r}: expected an IP address (127.0.0.1, 0.0.0.0, ::)"
        )
    for host in settings.redirect_hosts:
        if redirect_host(host) is None:
            raise SettingsError(
                f"redirect host {host!r} must be a host name or address alone, like shop.example.com "
                "(non-ASCII names in punycode, xn--...)"
            )
    for field in _FIELDS:
        value = getattr(settings, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingsError(f"{_flag(field.name)} = {value!r}: expected a finite number")
    if settings.redis_url is not None:
        try:
            redis_target.parse(settings.redis_url)
        except ValueError as err:
            raise SettingsError(f"{_flag('redis_url')} = {settings.redis_url!r}: {err}") from None
    try:
        durability = settings.write_durability()
    except ValueError as err:
        raise SettingsError(f"{_flag('durability')} = {settings.durability!r}: {err}") from None
    if durability.replicas and settings.durability_timeout >= settings.redis_timeout * 1000:
        # WAIT holds the connection's replies for up to the timeout: as long, and the write would count
        # as lost.
        raise SettingsError(
            f"{_flag('durability_timeout')} = {settings.durability_timeout}: expected less than "
            f"{_flag('redis_timeout')} ({settings.redis_timeout:g} s), in ms"
        )
    for proxy in settings.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise SettingsError(f"trusted proxy {proxy!r} is not an address or network") from None
    for origin in settings.allowed_origins:
        if origin != "*" and "://" not in origin:
            raise SettingsError(f"allowed origin {origin!r} must look like https://app.example.com or be *")
    if settings.max_body_bytes_in_flight < settings.max_request_bytes:
        raise SettingsError(
            f"{_flag('max_body_bytes_in_flight')} = {settings.max_body_bytes_in_flight}: expected at least "
            f"{_flag('max_request_bytes')} ({settings.max_request_bytes}), or no request that large is taken"
        )
    try:
        settings.decoder_options()
    except ValueError as err:
        # The decoder names the rule ("max_events must be ..."); say which flag that is.
        text = str(err)
        name = text.split(" ", 1)[0]
        if any(field.name == name for field in _FIELDS):
            text = f"{_flag(name)}: {text}"
        raise SettingsError(text) from None


def to_worker_environment(settings: Settings) -> dict[str, str]:
    """What `serve` puts into the environment of its workers."""
    return {WORKER_SETTINGS_VAR: msgspec.json.encode(settings).decode()}


def for_worker() -> Settings:
    """The settings `serve` passed down; run without `serve` (granian directly), the usual sources."""
    encoded = os.environ.get(WORKER_SETTINGS_VAR)
    if encoded is None:
        return build()
    return msgspec.json.decode(encoded, type=Settings)


def metrics_dir() -> str | None:
    """The multi-process metrics directory `serve` set up, if any."""
    return os.environ.get(METRICS_DIR_VAR) or None
