"""Which `redirect=URL` a request may send a browser to."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from trackgate.settings import redirect_host


class RedirectPolicy:
    """http(s) URLs whose host is one of `hosts` (as --redirect-hosts lists them); nothing else, so that
    the gateway is no open redirector."""

    __slots__ = ("_hosts",)

    def __init__(self, hosts: Iterable[str]) -> None:
        self._hosts = frozenset(filter(None, map(redirect_host, hosts)))

    def allows(self, url: str) -> bool:
        # Printable ASCII only: no CR/LF (header injection), no spaces, no backslashes (which browsers
        # read as slashes, so that `https://allowed\@evil` would go to evil).
        if len(url) > 2048 or not url.isascii() or not url.isprintable() or " " in url or "\\" in url:
            return False
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 -- raises ValueError for a malformed port
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or "@" in parts.netloc or not parts.hostname:
            return False
        return redirect_host(parts.hostname) in self._hosts
