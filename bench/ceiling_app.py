"""The ceiling for the load benchmark: a Granian RSGI app that reads the request and answers `1`.

It does what any /track server must (take the request, read the body so the connection can be reused,
answer) and nothing else, so its requests/s bound what the gateway can reach with the same Granian
settings on the same machine.
"""

from __future__ import annotations

from typing import Any

_HEADERS = [("content-type", "text/plain; charset=utf-8")]


class Ceiling:
    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.method == "POST":
            await proto()
        proto.response_bytes(200, _HEADERS, b"1")


app = Ceiling()
