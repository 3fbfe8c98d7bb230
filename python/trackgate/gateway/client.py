"""The caller's address: the socket peer, or behind trusted proxies the hop they say the request came
from."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from trackgate.rsgi import Headers


class ClientAddress:
    """Reads the caller's address of a request, trusting `X-Forwarded-For` only from `trusted_proxies`
    (networks, `10.0.0.0/8` or single addresses)."""

    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self._proxies = tuple(ipaddress.ip_network(p, strict=False) for p in trusted_proxies)
        # Peers repeat (they are the proxies), so each address is parsed and matched once.
        self._trusted = functools.lru_cache(maxsize=4096)(self._is_trusted)

    def of(self, client: str, headers: Headers) -> str:
        """The caller's address; `client` is the socket peer as Granian gives it (`host:port`)."""
        host = (
            client[1 : client.index("]")] if client.startswith("[") else client.rpartition(":")[0] or client
        )
        if not self._proxies or not self._trusted(host):
            return host
        # Behind trusted proxies the client is the right-most hop that is not one of them: every hop to
        # its left was written by the client itself and can say anything.
        hops = ",".join(headers.get_all("x-forwarded-for")).split(",")
        for hop in reversed(hops):
            hop = hop.strip()
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                break
            if not self._trusted(hop):
                return hop
            host = hop
        return host

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._proxies)
