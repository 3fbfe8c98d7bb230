"""The project registry in Redis, and each worker's cached view of which tokens exist.

A project has a public token (what clients put in `properties.token`), an API secret for the
server-side endpoints (/import, the query API), and any number of service accounts for the same (a user
and a secret each, Mixpanel's other way in). Secrets are random 32-byte values, so a plain SHA-256 is a
sufficient hash (no password stretching needed); they are compared in constant time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Final, TypeVar

import msgspec
from redis.exceptions import RedisError

from trackgate._native import TokenSet
from trackgate.bounds import DEFAULT_CAPS, CapError, Caps
from trackgate.keys import PROJECT_NAMES_KEY, PROJECT_SECRETS_KEY, PROJECTS_KEY, TOKEN, project_key
from trackgate.rate_limit import FIELDS as _LIMIT_FIELDS
from trackgate.rate_limit import RateLimit, RateLimitError
from trackgate.redis_target import RedisClient

log = logging.getLogger("trackgate.projects")

T = TypeVar("T")

# fullmatch, never match with `$`: `$` also matches before a final newline, which a key must not hold.
_SECRET_HASH_RE: Final = re.compile(r"sha256\$[0-9a-f]{64}")
_MAX_NAME = 200
# A service account's user name: no ':', which ends the user name in HTTP Basic credentials.
_USER_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,100}")

SERVICE_ACCOUNT_FIELD: Final = "sa:"
"""A project hash's field `sa:<user>` holds the hash of that service account's secret (service_accounts.py):
kept, backed up and restored with the rest of the project."""


class ProjectError(ValueError):
    """A project cannot be created as asked."""


DEFAULT_FUNNEL_WINDOW: Final = 30 * 86400

REGISTRY_MISSING: Final = (
    f"the project registry ({PROJECTS_KEY}) is gone from Redis (restarted without its data, or flushed); "
    "restore it with `trackgate project restore`"
)


class Project(msgspec.Struct, frozen=True):
    token: str
    name: str
    created: float
    funnel_window: int = DEFAULT_FUNNEL_WINDOW
    """Seconds after a user's step 1 during which later steps of a funnel count."""
    caps: Caps = DEFAULT_CAPS
    rate_limit: RateLimit | None = None
    """None: the project's clients may send as fast as the gateway takes events."""


def reply_text(value: bytes | str) -> str:
    """A Redis reply's text, whether the client decodes replies or not."""
    return value.decode() if isinstance(value, bytes) else value


def hash_secret(secret: str) -> str:
    """What the registry keeps of a secret (a project's or a service account's)."""
    return "sha256$" + hashlib.sha256(secret.encode()).hexdigest()


async def create_project(
    client: RedisClient,
    name: str,
    token: str | None = None,
    funnel_window: int = DEFAULT_FUNNEL_WINDOW,
    secret: str | None = None,
) -> tuple[Project, str]:
    """A new project and its secret (shown once; only its hash is kept). `token` keeps an existing
    Mixpanel token, so that clients moving to the gateway need no change; `secret` likewise keeps an
    existing API secret (as random as the ones made here: it is hashed without stretching)."""
    check_window(funnel_window)
    name = name.strip()
    check_name(name)
    token = token or secrets.token_hex(16)
    check_token(token)
    secret = secret or secrets.token_urlsafe(32)
    project = Project(token=token, name=name, created=round(time.time(), 3), funnel_window=funnel_window)
    # Claim the name first: HSETNX is the atomic check that two concurrent creates cannot both pass.
    if not await client.hsetnx(PROJECT_NAMES_KEY, name, token):
        raise ProjectError(f"a project named {name!r} exists already")
    if await client.exists(project_key(token)):
        await client.hdel(PROJECT_NAMES_KEY, name)
        raise ProjectError(f"a project with token {token} exists already")
    async with client.pipeline(transaction=True) as pipe:
        pipe.hset(
            project_key(token),
            mapping={
                "name": name,
                "secret": hash_secret(secret),
                "created": str(project.created),
                "funnel_window": str(funnel_window),
            },
        )
        pipe.hset(PROJECT_SECRETS_KEY, hash_secret(secret), token)
        pipe.sadd(PROJECTS_KEY, token)
        await pipe.execute()
    return project, secret


async def find_by_name(client: RedisClient, name: str) -> Project | None:
    token = await client.hget(PROJECT_NAMES_KEY, name)
    if token is None:
        return None
    return await get_project(client, reply_text(token))


async def get_project(client: RedisClient, token: str) -> Project | None:
    fields = await client.hgetall(project_key(token))
    if not fields:
        return None
    return Project(
        token=token,
        name=reply_text(fields[b"name"]),
        created=float(fields[b"created"]),
        funnel_window=window_of(fields.get(b"funnel_window")),
        caps=caps_of([fields.get(name.encode()) for name in _CAP_FIELDS]),
        rate_limit=rate_limit_of([fields.get(name.encode()) for name in _LIMIT_FIELDS]),
    )


def checked_project(token: str, fields: Mapping[str, str]) -> Project:
    """A project hash's fields as the registry's types, refusing (ProjectError, naming the field) what the
    registry's readers would misread. The readers are lenient, since a hash in Redis is there already;
    this is for a hash about to be written from elsewhere: a restored backup, perhaps edited by hand."""
    check_token(token)

    def field(name: str, parse: Callable[[str], T]) -> T:
        try:
            return parse(fields[name])
        except KeyError:
            raise ProjectError(f"no {name}") from None
        except (ValueError, ProjectError) as err:
            raise ProjectError(f"{name} {fields[name]!r}: {err}") from None

    field("name", check_name)
    field("secret", _check_secret_hash)
    for name in fields:
        if name.startswith(SERVICE_ACCOUNT_FIELD):
            check_user(name.removeprefix(SERVICE_ACCOUNT_FIELD))
            field(name, _check_secret_hash)
    given = {name: field(name, int) for name in _CAP_FIELDS if name in fields}
    try:
        caps = Caps(**given)
    except CapError as err:
        raise ProjectError(str(err)) from None
    limit = [field(name, int) for name in _LIMIT_FIELDS if name in fields]
    if limit and len(limit) != len(_LIMIT_FIELDS):
        raise ProjectError(f"a rate limit is all of {', '.join(_LIMIT_FIELDS)}, or none of them")
    try:
        rate_limit = RateLimit(*limit) if limit else None
    except RateLimitError as err:
        raise ProjectError(str(err)) from None
    return Project(
        token=token,
        name=fields["name"],
        created=field("created", _finite),
        funnel_window=field("funnel_window", _window) if "funnel_window" in fields else DEFAULT_FUNNEL_WINDOW,
        caps=caps,
        rate_limit=rate_limit,
    )


def _check_secret_hash(text: str) -> None:
    if _SECRET_HASH_RE.fullmatch(text) is None:
        raise ProjectError("not a secret's hash as the registry keeps it (sha256$ and 64 hex digits)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _window(text: str) -> int:
    seconds = int(text)
    check_window(seconds)
    return seconds


def window_of(value: bytes | str | None) -> int:
    """A project's funnel window from its hash's `funnel_window`: missing is the default, and so is one
    out of range or not a number (which only an edit by hand makes), with a warning, so that one bad
    hash neither stops a worker nor loses the other projects' settings."""
    if value is None:
        return DEFAULT_FUNNEL_WINDOW
    try:
        return _window(reply_text(value))
    except (ValueError, ProjectError):
        log.warning("project funnel_window %r is not a valid window: the default applies", value)
        return DEFAULT_FUNNEL_WINDOW


def check_user(user: str) -> None:
    if _USER_RE.fullmatch(user) is None:
        raise ProjectError(
            f"a service account's user {user[:100]!r} is not 1 to 100 characters of A-Z, a-z, 0-9, '.', '_' "
            "and '-'"
        )


def valid_token(token: str) -> bool:
    return TOKEN.fullmatch(token) is not None


def check_token(token: str) -> None:
    if not valid_token(token):
        raise ProjectError("a token is 8 to 64 characters of A-Z, a-z, 0-9, '_' and '-'")


def check_name(name: str) -> None:
    """A name as `create_project` stores it: stripped, 1 to `_MAX_NAME` characters."""
    if not name or len(name) > _MAX_NAME or name != name.strip():
        raise ProjectError(f"a project name is 1 to {_MAX_NAME} characters, with no space at either end")


_CAP_FIELDS: Final = Caps.__struct_fields__
"""The project hash's fields of its caps, named as `Caps`'s."""


def caps_of(values: list[bytes | str | None]) -> Caps:
    """A project's caps from its hash's `_CAP_FIELDS` values: a missing one is its default; any out of
    range or not a number (which only an edit by hand makes) make them all the defaults."""
    given = {name: value for name, value in zip(_CAP_FIELDS, values, strict=True) if value is not None}
    try:
        return Caps(**{name: int(value) for name, value in given.items()})
    except (CapError, ValueError):
        log.warning("project caps %r are not valid caps: the defaults apply", given)
        return DEFAULT_CAPS


async def set_caps(client: RedisClient, token: str, caps: Caps) -> None:
    """Takes effect in the gateway's workers at their next token reload."""
    await client.hset(project_key(token), mapping={name: str(getattr(caps, name)) for name in _CAP_FIELDS})


def rate_limit_of(values: list[bytes | str | None]) -> RateLimit | None:
    """A project's rate limit from its hash's `_LIMIT_FIELDS` values: None when it has none; one not all
    there, out of range or not a number (which only an edit by hand makes) is none either, with a warning:
    a limit misread must not refuse a project's events."""
    if all(value is None for value in values):
        return None
    try:
        if any(value is None for value in values):
            raise ValueError("not all there")
        return RateLimit(*(int(value) for value in values if value is not None))
    except (RateLimitError, ValueError):
        log.warning("project rate limit %r is not a valid limit: none applies", values)
        return None


async def set_rate_limit(client: RedisClient, token: str, limit: RateLimit | None) -> None:
    """Set (or, with None, remove) a project's rate limit; takes effect in the gateway's workers at their
    next token reload."""
    if limit is None:
        await client.hdel(project_key(token), *_LIMIT_FIELDS)
    else:
        await client.hset(
            project_key(token), mapping={name: str(getattr(limit, name)) for name in _LIMIT_FIELDS}
        )


def check_window(seconds: int) -> None:
    if not 60 <= seconds <= 366 * 86400:
        raise ProjectError("a funnel window is from 1 minute to 366 days")


async def set_funnel_window(client: RedisClient, token: str, seconds: int) -> None:
    """Takes effect in the gateway's workers at their next token reload."""
    check_window(seconds)
    await client.hset(project_key(token), "funnel_window", str(seconds))


async def list_projects(client: RedisClient) -> list[Project]:
    tokens = sorted(reply_text(t) for t in await client.smembers(PROJECTS_KEY))
    found = [await get_project(client, token) for token in tokens]
    return sorted((p for p in found if p is not None), key=lambda p: (p.created, p.name))


async def project_for_secret(client: RedisClient, secret: str) -> str | None:
    """The token of the project whose API secret this is. The lookup is by the secret's hash, and the
    stored hash is then compared in constant time."""
    hashed = hash_secret(secret)
    token = await client.hget(PROJECT_SECRETS_KEY, hashed)
    if token is None:
        return None
    stored = await client.hget(project_key(reply_text(token)), "secret")
    if stored is None or not hmac.compare_digest(hashed, reply_text(stored)):
        return None
    return reply_text(token)


async def project_token(client: RedisClient, name_or_token: str) -> str | None:
    """The token of the project that a name or a token names (`project_id`), or None."""
    token = await client.hget(PROJECT_NAMES_KEY, name_or_token)
    if token is not None:
        return reply_text(token)
    if valid_token(name_or_token) and await client.exists(project_key(name_or_token)):
        return name_or_token
    return None


class TokenCache:
    """A worker's view of the project tokens, handed to the decoder as a TokenSet.

    Reloaded every `interval` seconds, and when a request names a token it does not know (a project
    created a moment ago). Such reloads happen at most once a second: requests that arrive sooner wait
    for the next one and share it, so a stream of bad tokens costs one Redis read a second, and a new
    project's first events are never refused because of a stale list.

    A list found empty when the worker knew projects means the registry is gone, not that every project
    was deleted: Redis restarted without its data, or was flushed. Then `registry_missing` is set and the
    old list kept until the registry is back: the gateway answers 503, which clients retry, rather than
    store events for projects that no longer exist, or answer 401, which they do not retry."""

    MIN_INTERVAL = 1.0

    def __init__(self, client: RedisClient, interval: float) -> None:
        self.tokens = TokenSet([])
        self.registry_missing = False
        self._windows: dict[str, int] = {}
        self._caps: dict[str, Caps] = {}
        self.limits: dict[str, RateLimit] = {}
        """The limited projects' limits, by token (most projects have none)."""
        self._client = client
        self._interval = interval
        self._loaded_at = -1e9
        self._pending: asyncio.Task[bool] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._load()
        self._task = asyncio.create_task(self._periodic(), name="trackgate-token-refresh")

    async def stop(self) -> None:
        for task in (self._task, self._pending):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._pending = None

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._load()

    async def _load(self, delay: float = 0.0) -> bool:
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            members = [reply_text(m) for m in await self._client.smembers(PROJECTS_KEY)]
            async with self._client.pipeline(transaction=False) as pipe:
                for token in members:
                    pipe.hmget(project_key(token), ["funnel_window", *_CAP_FIELDS, *_LIMIT_FIELDS])
                settings = await pipe.execute()
        except (RedisError, OSError) as err:
            # Keep the last known tokens: an outage must not turn every event into a 401.
            log.warning("project list not reloaded: %s", err)
            return False
        finally:
            self._loaded_at = time.monotonic()
        if not members and len(self.tokens):
            if not self.registry_missing:
                log.error("%s; answering 503 until it is back", REGISTRY_MISSING)
            self.registry_missing = True
            return True
        if self.registry_missing:
            log.warning("the project registry is back: %d projects", len(members))
        self.registry_missing = False
        self.tokens = TokenSet(members)
        caps_end = 1 + len(_CAP_FIELDS)
        self._windows, self._caps, self.limits = {}, {}, {}
        for token, values in zip(members, settings, strict=True):
            if values[0] is not None:
                self._windows[token] = window_of(values[0])
            self._caps[token] = caps_of(values[1:caps_end])
            limit = rate_limit_of(values[caps_end:])
            if limit is not None:
                self.limits[token] = limit
        return True

    def funnel_window(self, token: str) -> int:
        return self._windows.get(token, DEFAULT_FUNNEL_WINDOW)

    def caps(self, token: str) -> Caps:
        return self._caps.get(token, DEFAULT_CAPS)

    async def reload_for_unknown(self) -> bool:
        """Reload because a request named an unknown token; True when the list was read."""
        if self._pending is None or self._pending.done():
            delay = self._loaded_at + self.MIN_INTERVAL - time.monotonic()
            self._pending = asyncio.create_task(self._load(delay), name="trackgate-token-reload")
        return await asyncio.shield(self._pending)
