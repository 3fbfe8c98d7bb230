"""What the ingestion port answers for the query API and the dashboard, which are served elsewhere: on
`--reports-port`, by a process of their own (`trackgate.reports`), so that no report runs in a worker
that answers /track.

The dashboard is redirected there (308): a browser follows it. An API call is answered 404 naming the
port instead: a client that follows a redirect to another port drops the Authorization header (as
browsers, curl and requests do), and would get a puzzling 401.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from trackgate import metrics
from trackgate.rsgi import HTTPProtocol, Scope

# A host name, an IPv4 address or a bracketed IPv6 address, with its port if any: nothing else is put
# in a Location header.
_HOST_RE: Final = re.compile(r"(?P<name>[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?\Z")


def reports_elsewhere(scope: Scope, proto: HTTPProtocol, reports_port: int) -> None:
    where = f"the query API and the dashboard are served on port {reports_port} (--reports-port)"
    host = _HOST_RE.match(scope.headers.get("host") or "")
    if scope.path.startswith("/dashboard") and host is not None:
        location = f"//{host['name']}:{reports_port}/dashboard"
        proto.response_bytes(308, [("location", location), ("content-type", "text/plain")], where.encode())
        metrics.count_request("dashboard", 308)
        return
    body = msgspec.json.encode({"error": where})
    proto.response_bytes(404, [("content-type", "application/json")], body)
    metrics.count_request("api", 404)
