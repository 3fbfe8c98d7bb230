"""The project registry moved to its hash-tagged keys (`keys.REGISTRY_PREFIX`), from the names it had
before (`keys.LEGACY_*`): run before anything of this version reads the registry (`trackgate serve`
before its workers start, every worker, every CLI command), and a no-op once done.

The move copies, then deletes. The copy is one transaction (the tagged keys share a slot): a reader sees
all of the registry under its new names or none of it, never a project set naming hashes not yet
there. An entry already under the new name is kept (whatever wrote it is newer than the layout it
replaces), so the copy can run twice, and two processes starting together both end with the whole
registry; the old keys are deleted only after the copy, so a process that finds them half deleted finds
the copy complete. What a gateway of the previous version writes after the move (a project created
through its CLI) goes to the old names, and is moved by the next process of this version that starts.
"""

from __future__ import annotations

import logging

from trackgate import keys
from trackgate.projects import reply_text
from trackgate.redis_target import RedisClient

log = logging.getLogger("trackgate.registry")


async def migrate_registry(client: RedisClient) -> int:
    """Move a registry kept under the old names to the tagged ones; the number of projects moved (0 when
    there was nothing to move, the usual case: one round trip)."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.smembers(keys.LEGACY_PROJECTS_KEY)
        pipe.hgetall(keys.LEGACY_PROJECT_NAMES_KEY)
        pipe.hgetall(keys.LEGACY_PROJECT_SECRETS_KEY)
        members, names, secrets = await pipe.execute()
    if not (members or names or secrets):
        return 0
    tokens = sorted({reply_text(t) for t in (*members, *names.values(), *secrets.values())})
    async with client.pipeline(transaction=False) as pipe:
        for token in tokens:
            pipe.hgetall(keys.legacy_project_key(token))
            pipe.exists(keys.project_key(token))
        found = await pipe.execute()
    async with client.pipeline(transaction=True) as pipe:
        for token, fields, exists in zip(tokens, found[::2], found[1::2], strict=True):
            if fields and not exists:
                pipe.hset(keys.project_key(token), mapping=fields)
        for index, entries in ((keys.PROJECT_NAMES_KEY, names), (keys.PROJECT_SECRETS_KEY, secrets)):
            for field, token in entries.items():
                pipe.hsetnx(index, field, token)
        if members:
            pipe.sadd(keys.PROJECTS_KEY, *members)
        await pipe.execute()
    # One key a command: on a Cluster the old keys are in slots of their own.
    async with client.pipeline(transaction=False) as pipe:
        for token in tokens:
            pipe.delete(keys.legacy_project_key(token))
        for key in (keys.LEGACY_PROJECT_NAMES_KEY, keys.LEGACY_PROJECT_SECRETS_KEY, keys.LEGACY_PROJECTS_KEY):
            pipe.delete(key)
        await pipe.execute()
    log.warning(
        "the project registry (%d projects) moved to its keys of this version, %s*",
        len(tokens),
        keys.REGISTRY_PREFIX,
    )
    return len(tokens)
