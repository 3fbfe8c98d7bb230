"""Which project a server-side request may act for, by its HTTP Basic credentials: the one rule of
`/import` (the gateway) and of the query API (the reports process), as Mixpanel's:

- the project's API secret as the user name, the password ignored (`curl -u "$SECRET:"`, the legacy
  form, which mixpanel-python sends with `api_secret`);
- a service account, `user:secret`, with `project_id` (the project's name or token) in the query
  string naming its project.

With `project_id` given, the credentials must be that project's. A project's public token is never
enough: /import can write any time in the past. Secrets are looked up by their hash and compared in
constant time (projects.py).
"""

from __future__ import annotations

import base64
import binascii
from typing import Final, Protocol

from trackgate import projects, service_accounts
from trackgate.redis_target import RedisClient

CHALLENGE: Final = ("www-authenticate", 'Basic realm="trackgate", charset="UTF-8"')
"""The header of a 401 answer: which credentials to send."""


class Credentials(Protocol):
    async def project_for(self, authorization: str | None, project_id: str | None) -> str | None:
        """The token of the project the `Authorization` header's credentials are for, with `project_id`
        as the query string gives it; None when they are no project's. Raises RedisError or OSError when
        the registry cannot be read."""


class RegistryCredentials:
    """Credentials checked against the project registry in Redis."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client

    async def project_for(self, authorization: str | None, project_id: str | None) -> str | None:
        basic = basic_credentials(authorization)
        if basic is None:
            return None
        user, password = basic
        if project_id is None:
            return await projects.project_for_secret(self._client, user)
        token = await projects.project_token(self._client, project_id)
        if token is None:
            return None
        if password and await service_accounts.verify(self._client, token, user, password):
            return token
        return token if await projects.project_for_secret(self._client, user) == token else None


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """The user name and password of an `Authorization: Basic` header, or None when it holds none (no
    header, another scheme, not base64 or not UTF-8, an empty user name)."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, password = decoded.partition(":")
    return (user, password) if user else None
