"""Cross-origin requests: which origins may send events from a browser, and the headers that say so."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from trackgate.rsgi import Headers

_HEADER_LIST_RE: Final = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+(?:\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*\Z")
_DEFAULT_HEADERS: Final = "Content-Type, Content-Encoding"


class Cors:
    """The allowed origins (`*`: any). An allowed origin is echoed, with credentials allowed:
    mixpanel-browser sends its requests with credentials, which browsers let through only so."""

    __slots__ = ("_any", "_origins")

    def __init__(self, allowed_origins: Iterable[str]) -> None:
        self._origins = frozenset(allowed_origins)
        self._any = "*" in self._origins

    def headers(self, origin: str) -> list[tuple[str, str]] | None:
        """The answer's CORS headers for a request from `origin`, or None when it is not allowed."""
        if not self._any and origin not in self._origins:
            return None
        return [
            ("access-control-allow-origin", origin),
            ("access-control-allow-credentials", "true"),
            ("vary", "Origin"),
        ]

    @staticmethod
    def preflight(request: Headers, cors: list[tuple[str, str]], methods: str) -> list[tuple[str, str]]:
        """The headers of the answer to an OPTIONS request; `cors` is empty when it has no Origin."""
        answer = [("allow", methods), *cors]
        if cors:
            asked = request.get("access-control-request-headers")
            allowed = asked if asked and _HEADER_LIST_RE.match(asked.strip()) else _DEFAULT_HEADERS
            answer += [
                ("access-control-allow-methods", methods),
                ("access-control-allow-headers", allowed),
                ("access-control-max-age", "86400"),
            ]
        return answer
