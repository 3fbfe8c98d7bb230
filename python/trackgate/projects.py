"""The project registry in Redis, and each worker's cached view of which tokens exist.

A project has a public token (what clients put in `properties.token`) and an API secret for the
server-side endpoints to come. Secrets are random 32-byte values, so a plain SHA-256 is a sufficient
hash (no password stretching needed); they are compared in constant time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from typing import Final

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from trackgate._native import TokenSet
from trackgate.bounds import DEFAULT_CAPS, CapError, Caps
from trackgate.keys import PROJECT_NAMES_KEY, PROJECT_SECRETS_KEY, PROJECTS_KEY, project_key

log = logging.getLogger("trackgate.projects")

# Tokens become part of Redis keys and of hash tags: no braces, colons or spaces.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_MAX_NAME = 200


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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _hash_secret(secret: str) -> str:
    return "sha256$" + hashlib.sha256(secret.encode()).hexdigest()


async def create_project(
    client: Redis, name: str, token: str | None = None, funnel_window: int = DEFAULT_FUNNEL_WINDOW
) -> tuple[Project, str]:
    """A new project and its secret (shown once; only its hash is kept). `token` keeps an existing
    Mixpanel token, so that clients moving to the gateway need no change."""
    check_window(funnel_window)
    name = name.strip()
    if not name or len(name) > _MAX_NAME:
        raise ProjectError(f"a project name is 1 to {_MAX_NAME} characters")
    token = token or secrets.token_hex(16)
    if not _TOKEN_RE.match(token):
        raise ProjectError("a token is 8 to 64 characters of A-Z, a-z, 0-9, '_' and '-'")
    secret = secrets.token_urlsafe(32)
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
                "secret": _hash_secret(secret),
                "created": str(project.created),
                "funnel_window": str(funnel_window),
            },
        )
        pipe.hset(PROJECT_SECRETS_KEY, _hash_secret(secret), token)
        pipe.sadd(PROJECTS_KEY, token)
        await pipe.execute()
    return project, secret


async def find_by_name(client: Redis, name: str) -> Project | None:
    token = await client.hget(PROJECT_NAMES_KEY, name)
    if token is None:
        return None
    return await get_project(client, _text(token))


async def get_project(client: Redis, token: str) -> Project | None:
    fields = await client.hgetall(project_key(token))
    if not fields:
        return None
    return Project(
        token=token,
        name=_text(fields[b"name"]),
        created=float(fields[b"created"]),
        funnel_window=int(fields.get(b"funnel_window", DEFAULT_FUNNEL_WINDOW)),
        caps=caps_of([fields.get(name.encode()) for name in _CAP_FIELDS]),
    )


def valid_token(token: str) -> bool:
    return _TOKEN_RE.match(token) is not None


_CAP_FIELDS: Final = Caps.__struct_fields__
"""The project hash's fields of its caps, named as `Caps`'s."""


def caps_of(values: list[bytes | str | None]) -> Caps:
    """A project's caps from its hash's `_CAP_FIELDS` values: each missing one (or out of range, which
    only an edit by hand makes) is the default."""
    given = {name: int(value) for name, value in zip(_CAP_FIELDS, values, strict=True) if value is not None}
    try:
        return Caps(**given)
    except (CapError, ValueError):
        log.warning("project caps %r out of range: the defaults apply", given)
        return DEFAULT_CAPS


async def set_caps(client: Redis, token: str, caps: Caps) -> None:
    """Takes effect in the gateway's workers at their next token reload."""
    await client.hset(project_key(token), mapping={name: str(getattr(caps, name)) for name in _CAP_FIELDS})


def check_window(seconds: int) -> None:
    if not 60 <= seconds <= 366 * 86400:
        raise ProjectError("a funnel window is from 1 minute to 366 days")


async def set_funnel_window(client: Redis, token: str, seconds: int) -> None:
    """Takes effect in the gateway's workers at their next token reload."""
    check_window(seconds)
    await client.hset(project_key(token), "funnel_window", str(seconds))


async def list_projects(client: Redis) -> list[Project]:
    tokens = sorted(_text(t) for t in await client.smembers(PROJECTS_KEY))
    found = [await get_project(client, token) for token in tokens]
    return sorted((p for p in found if p is not None), key=lambda p: (p.created, p.name))


async def project_for_secret(client: Redis, secret: str) -> str | None:
    """The token of the project whose API secret this is. The lookup is by the secret's hash, and the
    stored hash is then compared in constant time."""
    hashed = _hash_secret(secret)
    token = await client.hget(PROJECT_SECRETS_KEY, hashed)
    if token is None:
        return None
    stored = await client.hget(project_key(_text(token)), "secret")
    if stored is None or not hmac.compare_digest(hashed, _text(stored)):
        return None
    return _text(token)


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

    def __init__(self, client: Redis, interval: float) -> None:
        self.tokens = TokenSet([])
        self.registry_missing = False
        self._windows: dict[str, int] = {}
        self._caps: dict[str, Caps] = {}
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
            members = [_text(m) for m in await self._client.smembers(PROJECTS_KEY)]
            async with self._client.pipeline(transaction=False) as pipe:
                for token in members:
                    pipe.hmget(project_key(token), ["funnel_window", *_CAP_FIELDS])
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
        self._windows = {
            token: int(window)
            for token, (window, *_) in zip(members, settings, strict=True)
            if window is not None
        }
        self._caps = {token: caps_of(caps) for token, (_, *caps) in zip(members, settings, strict=True)}
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
