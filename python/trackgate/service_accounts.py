"""A project's service accounts, Mixpanel's other way in for server-side calls (/import, the query API):
a user and a secret each, kept as the field `sa:<user>` of the project's registry hash (projects.py) with
the secret's hash, so that a backup and a restore carry them with the rest of the project."""

from __future__ import annotations

import hmac
import secrets

from trackgate.keys import project_key
from trackgate.projects import SERVICE_ACCOUNT_FIELD, ProjectError, check_user, hash_secret, reply_text
from trackgate.redis_target import RedisClient


async def add(
    client: RedisClient, token: str, user: str | None = None, secret: str | None = None
) -> tuple[str, str]:
    """A new service account of the project: its user and its secret (shown once; only its hash is
    kept). By default both are made here; given, they are kept (an account moved from elsewhere: its
    secret is hashed without stretching, so it must be as random as the ones made here)."""
    user = user or f"sa-{secrets.token_hex(8)}"
    check_user(user)
    secret = secret or secrets.token_urlsafe(32)
    if not await client.hsetnx(project_key(token), SERVICE_ACCOUNT_FIELD + user, hash_secret(secret)):
        raise ProjectError(f"the project has a service account {user!r} already")
    return user, secret


async def users(client: RedisClient, token: str) -> list[str]:
    """The users of the project's service accounts, in name order."""
    fields = await client.hkeys(project_key(token))
    names = (reply_text(name) for name in fields)
    return sorted(n.removeprefix(SERVICE_ACCOUNT_FIELD) for n in names if n.startswith(SERVICE_ACCOUNT_FIELD))


async def remove(client: RedisClient, token: str, user: str) -> bool:
    """False when the project has no such account."""
    return bool(await client.hdel(project_key(token), SERVICE_ACCOUNT_FIELD + user))


async def verify(client: RedisClient, token: str, user: str, secret: str) -> bool:
    """Whether `user` and `secret` are a service account of the project, the secret's hash compared with
    the stored one in constant time."""
    stored = await client.hget(project_key(token), SERVICE_ACCOUNT_FIELD + user)
    return stored is not None and hmac.compare_digest(hash_secret(secret), reply_text(stored))
