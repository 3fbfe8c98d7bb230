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
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import WatchError

from trackgate.keys import PROJECT_NAMES_KEY, PROJECT_SECRETS_KEY, PROJECTS_KEY, project_key
from trackgate.projects import ProjectError, checked_project, reply_text, valid_token
from trackgate.redis_target import RedisClient

FORMAT: Final = "trackgate-projects"

AnyPipeline = Pipeline | ClusterPipeline
"""A transaction of one Redis, or of a Cluster's slot (the registry's keys share one)."""


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
    removed: list[str] = msgspec.field(default_factory=list)
    """Projects removed with --force because they held a name of the backup: `token (name)`."""


async def _fields(client: RedisClient | AnyPipeline, token: str) -> dict[str, str]:
    raw = await client.hgetall(project_key(token))
    return {reply_text(name): reply_text(value) for name, value in raw.items()}


async def backup(client: RedisClient) -> Backup:
    """Every project of the registry, as a restore reads it (`encode` makes the file)."""
    tokens = sorted(reply_text(t) for t in await client.smembers(PROJECTS_KEY))
    return Backup(
        FORMAT, 1, [SavedProject(t, fields) for t in tokens if (fields := await _fields(client, t))]
    )


def encode(saved: Backup) -> bytes:
    return msgspec.json.format(msgspec.json.encode(saved)) + b"\n"


def read_backup(data: bytes) -> Backup:
    """The backup in `data`, each project checked as the registry's readers will read it: a field they
    would misread (by hand, `funnel_window: "30d"`) is refused here, naming the project and the field,
    rather than restored and then found by every worker."""
    try:
        saved = msgspec.json.decode(data, type=Backup)
    except msgspec.DecodeError as err:
        raise ProjectError(f"not a trackgate project backup: {err}") from None
    for project in saved.projects:
        if not valid_token(project.token):
            raise ProjectError(f"not a trackgate project backup: a token {project.token[:80]!r}")
        try:
            checked_project(project.token, project.fields)
        except ProjectError as err:
            name = project.fields.get("name", "")[:80]
            raise ProjectError(f"project {project.token} ({name!r}) of the backup: {err}") from None
    return saved


async def restore(client: RedisClient, saved: Backup, *, force: bool = False) -> Restored:
    """Put the backup's projects into the registry, in one transaction: a gateway that sees the registry
    again sees all of it. A project that exists with other fields, or a name another token holds, is a
    conflict: refused (nothing is written) unless `force`, which overwrites them and removes a project
    that held a name of the backup (two projects of one name would leave `project list` and the name
    index disagreeing). The indexes and the project set are watched from the first read to the write,
    so that a project created meanwhile makes the restore look again rather than overwrite it."""
    async with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(PROJECT_NAMES_KEY, PROJECT_SECRETS_KEY, PROJECTS_KEY)
                return await _restore_watched(pipe, saved, force)
            except WatchError:
                continue


async def _restore_watched(pipe: AnyPipeline, saved: Backup, force: bool) -> Restored:
    """One attempt of `restore`, reading through `pipe` (watching) and writing in its MULTI."""
    written: list[SavedProject] = []
    unchanged: list[str] = []
    conflicts: list[str] = []
    replaced: dict[str, dict[str, str]] = {}
    displaced: dict[str, dict[str, str]] = {}
    restored_tokens = {project.token for project in saved.projects}
    for project in saved.projects:
        name, token = project.fields["name"], project.token
        await pipe.watch(project_key(token))
        current = await _fields(pipe, token)
        owner = _optional_text(await pipe.hget(PROJECT_NAMES_KEY, name))
        if current == project.fields and owner == token and await _indexed(pipe, project):
            unchanged.append(name)
            continue
        if current and current != project.fields:
            conflicts.append(f"project {token} exists with other settings ({current.get('name')!r})")
            replaced[token] = current
        if owner is not None and owner != token:
            conflicts.append(f"the name {name!r} belongs to project {owner}")
            if owner not in restored_tokens:
                await pipe.watch(project_key(owner))
                displaced[owner] = await _fields(pipe, owner)
        written.append(project)
    if conflicts and not force:
        raise ProjectError("; ".join(conflicts) + "; nothing restored (--force overwrites them)")
    if not written:
        return Restored([], unchanged)  # the caller's pipeline context unwatches
    stale = [
        entry for token, old in (replaced | displaced).items() for entry in await _entries(pipe, token, old)
    ]
    pipe.multi()  # type: ignore[no-untyped-call]
    # Removals first: a name or secret that an old hash held may be one a restored project takes.
    for token in replaced | displaced:
        pipe.delete(project_key(token))
    for index, field in stale:
        pipe.hdel(index, field)
    for token in displaced:
        pipe.srem(PROJECTS_KEY, token)
    for project in written:
        pipe.hset(
            project_key(project.token), items=[part for pair in project.fields.items() for part in pair]
        )
        pipe.hset(PROJECT_SECRETS_KEY, project.fields["secret"], project.token)
        pipe.hset(PROJECT_NAMES_KEY, project.fields["name"], project.token)
        pipe.sadd(PROJECTS_KEY, project.token)
    await pipe.execute()
    removed = [f"{token} ({old.get('name')!r})" for token, old in displaced.items()]
    return Restored([p.fields["name"] for p in written], unchanged, removed)


async def _entries(pipe: AnyPipeline, token: str, fields: dict[str, str]) -> list[tuple[str, str]]:
    """The name and secret index entries that point at the project whose hash is `fields`: those that
    must go with it (an entry pointing elsewhere belongs to another project and stays)."""
    found = []
    for index, field in (
        (PROJECT_NAMES_KEY, fields.get("name")),
        (PROJECT_SECRETS_KEY, fields.get("secret")),
    ):
        if field is not None and _optional_text(await pipe.hget(index, field)) == token:
            found.append((index, field))
    return found


async def _indexed(pipe: AnyPipeline, project: SavedProject) -> bool:
    """Whether the project set and the secret index know the project: a registry that lost only them
    (and not its hash or name) would otherwise be taken as restored and stay unusable."""
    member = await pipe.sismember(PROJECTS_KEY, project.token)
    owner = _optional_text(await pipe.hget(PROJECT_SECRETS_KEY, project.fields["secret"]))
    return bool(member) and owner == project.token


def _optional_text(value: bytes | str | None) -> str | None:
    return None if value is None else reply_text(value)
