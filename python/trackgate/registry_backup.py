"""The project registry as a file: `trackgate project backup` writes it, `trackgate project restore` puts
it back, so that after Redis lost its data the projects return with the same tokens and API secrets
(clients and Query API callers need no change).

The file is JSON: each project's token and its whole registry hash (name, the secret's hash, created,
funnel_window and any other per-project setting kept there), from which the name and secret indexes
are rebuilt. Secrets themselves are never stored, only their hashes; the file still lets anyone who
holds a secret use it against the restored registry, so keep it as you keep the Redis data.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec
from redis.asyncio import Redis

from trackgate.keys import PROJECT_NAMES_KEY, PROJECT_SECRETS_KEY, PROJECTS_KEY, project_key
from trackgate.projects import ProjectError, valid_token

FORMAT: Final = "trackgate-projects"


class SavedProject(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    token: str
    fields: dict[str, str]
    """The project's registry hash, field by field."""


class Backup(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: Literal["trackgate-projects"]
    version: Literal[1]
    projects: list[SavedProject]


class Restored(msgspec.Struct, frozen=True):
    written: list[str]
    """Names of the projects written (absent, or overwritten with --force)."""
    unchanged: list[str]
    """Names of the projects that were there already, as saved."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _fields(client: Redis, token: str) -> dict[str, str]:
    raw = await client.hgetall(project_key(token))
    return {_text(name): _text(value) for name, value in raw.items()}


async def backup(client: Redis) -> bytes:
    """Every project of the registry, as the JSON a restore reads."""
    tokens = sorted(_text(t) for t in await client.smembers(PROJECTS_KEY))
    saved = [SavedProject(token, fields) for token in tokens if (fields := await _fields(client, token))]
    return msgspec.json.format(msgspec.json.encode(Backup(FORMAT, 1, saved))) + b"\n"


def read_backup(data: bytes) -> Backup:
    try:
        saved = msgspec.json.decode(data, type=Backup)
    except msgspec.DecodeError as err:
        raise ProjectError(f"not a trackgate project backup: {err}") from None
    for project in saved.projects:
        if not valid_token(project.token):
            raise ProjectError(f"not a trackgate project backup: a token {project.token[:80]!r}")
        missing = {"name", "secret"} - set(project.fields)
        if missing:
            raise ProjectError(f"project {project.token} of the backup has no {', '.join(sorted(missing))}")
    return saved


async def restore(client: Redis, saved: Backup, *, force: bool = False) -> Restored:
    """Put the backup's projects into the registry, in one transaction: a gateway that sees the registry
    again sees all of it. A project that exists with other fields, or a name another token holds, is a
    conflict: refused (nothing is written) unless `force`, which overwrites them."""
    written: list[SavedProject] = []
    unchanged: list[str] = []
    conflicts: list[str] = []
    replaced: dict[str, dict[str, str]] = {}
    for project in saved.projects:
        name = project.fields["name"]
        current = await _fields(client, project.token)
        owner = await client.hget(PROJECT_NAMES_KEY, name)
        if current == project.fields and owner is not None and _text(owner) == project.token:
            unchanged.append(name)
            continue
        if current and current != project.fields:
            conflicts.append(f"project {project.token} exists with other settings ({current.get('name')!r})")
            replaced[project.token] = current
        if owner is not None and _text(owner) != project.token:
            conflicts.append(f"the name {name!r} belongs to project {_text(owner)}")
        written.append(project)
    if conflicts and not force:
        raise ProjectError("; ".join(conflicts) + "; nothing restored (--force overwrites them)")
    if written:
        async with client.pipeline(transaction=True) as pipe:
            for project in written:
                key = project_key(project.token)
                old = replaced.get(project.token)
                if old is not None:
                    # What indexed the overwritten project must not point at the restored one.
                    pipe.delete(key)
                    if "secret" in old:
                        pipe.hdel(PROJECT_SECRETS_KEY, old["secret"])
                    if "name" in old and old["name"] != project.fields["name"]:
                        pipe.hdel(PROJECT_NAMES_KEY, old["name"])
                pipe.hset(key, items=[part for pair in project.fields.items() for part in pair])
                pipe.hset(PROJECT_SECRETS_KEY, project.fields["secret"], project.token)
                pipe.hset(PROJECT_NAMES_KEY, project.fields["name"], project.token)
                pipe.sadd(PROJECTS_KEY, project.token)
            await pipe.execute()
    return Restored([p.fields["name"] for p in written], unchanged)
