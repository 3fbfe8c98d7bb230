"""What the load generator sends: the shapes of requests and the events in them."""

from __future__ import annotations

import base64
import json
import urllib.parse
from dataclasses import dataclass
from typing import Any, Final

UNIQUE_MARK: Final = "~" * 16
"""What begins every `$insert_id` of a POST body (a batch): wrk's scripts put a string of 16 characters
of their own in its place in every request they send (`wrk_requests.lua`), so that no event is sent twice
in a run, or in two runs, and a gateway that deduplicates (`--dedup-window`) stores every one. A GET's
event, inside base64, keeps an `$insert_id` of its own, and repeats every 1,000 requests, unless the
shape asks for `unique_gets` (B64_MARK)."""

B64_MARK: Final = "_" * 24
"""In a GET of a `unique_gets` shape: where the base64 text of the event's `$insert_id` holds 18 bytes
that wrk's script fills, in every request, with `u-` and a string like UNIQUE_MARK's, base64-encoded. The
18 bytes start at a multiple of 3 in the event's JSON, so they are 24 base64 characters of their own,
and `_`, not a base64 character, marks them."""
_B64_BYTES: Final = 18


def with_marks_filled(text: str, fill: str = "0" * len(UNIQUE_MARK)) -> str:
    """A request's text with its marks replaced, for a sender that does not replace them itself."""
    return text.replace(UNIQUE_MARK, fill)


@dataclass(frozen=True)
class Shape:
    """What each request carries: one event by GET (mixpanel-browser style: base64 in the query string,
    ip=1, a cache buster), or a batch by POST (mixpanel-python style: a form body `data=<JSON array>`)."""

    batch: int
    funnel_fraction: float = 0.0
    unique_gets: bool = False
    """A GET's event new in every request, as a POST's are (B64_MARK), so that a gateway that
    deduplicates stores every one."""

    @property
    def key(self) -> str:
        name = "get1" if self.batch == 1 else f"post{self.batch}"
        name += "-unique" if self.unique_gets and self.batch == 1 else ""
        return name + (f"+funnel{round(self.funnel_fraction * 100)}" if self.funnel_fraction else "")

    @property
    def label(self) -> str:
        name = "GET 1 event" if self.batch == 1 else f"POST {self.batch} events"
        name += " (each new)" if self.unique_gets and self.batch == 1 else ""
        return name + (f", {round(self.funnel_fraction * 100)}% mp_funnel" if self.funnel_fraction else "")


def make_event(
    token: str, i: int, now: float, funnel_index: int | None = None, *, marked: bool = False
) -> dict[str, Any]:
    """A ~300-byte event; with `funnel_index`, an mp_funnel step instead: users go through steps 1, 2, 3
    of a `checkout` funnel in order, three funnel events per user. `marked`: its `$insert_id` begins with
    UNIQUE_MARK."""
    prefix = UNIQUE_MARK if marked else ""
    if funnel_index is not None:
        return {
            "event": "mp_funnel",
            "properties": {
                "token": token,
                "distinct_id": f"funnel-user-{funnel_index // 3}",
                "time": now,
                "$insert_id": prefix + f"f{funnel_index:031x}"[len(prefix) :],
                "mp_lib": "web",
                "funnel": "checkout",
                "step": funnel_index % 3 + 1,
                "goal": ("view cart", "enter address", "pay")[funnel_index % 3],
            },
        }
    return {
        "event": "bench event",
        "properties": {
            "token": token,
            "distinct_id": f"user-{i}",
            "time": now,
            "$insert_id": prefix + f"{i:032x}"[len(prefix) :],
            "mp_lib": "web",
            "$current_url": "https://shop.example.com/products/42?ref=bench",
            "plan": "pro",
            "amount": 42.5,
        },
    }


def _events(token: str, shape: Shape, start: int, now: float) -> list[dict[str, Any]]:
    """Events start .. start+batch-1; with a funnel fraction f, every (1/f)-th event overall is a funnel
    step (so exactly f of them over the script)."""
    every = round(1 / shape.funnel_fraction) if shape.funnel_fraction else 0
    marked = shape.batch > 1
    out = []
    for i in range(start, start + shape.batch):
        if every and i % every == every - 1:
            out.append(make_event(token, i, now, funnel_index=i // every, marked=marked))
        else:
            out.append(make_event(token, i, now, marked=marked))
    return out


Tokens = str | tuple[str, ...]
"""The project (its token) a load's events are for, or the projects its requests take in turn."""


def _base64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unique_get_data(event: dict[str, Any]) -> str:
    """The event's base64 with its `$insert_id`'s 18 bytes in B64_MARK's place (spaces after the JSON's
    first brace move them to a multiple of 3)."""
    event["properties"]["$insert_id"] = "u" * _B64_BYTES
    text = json.dumps(event)
    at = text.index('"$insert_id": "') + len('"$insert_id": "')
    pad = -at % 3
    start = (at + pad) // 3 * 4
    data = _base64("{" + " " * pad + text[1:])
    return data[:start] + B64_MARK + data[start + len(B64_MARK) :]


def requests_for(tokens: Tokens, shape: Shape, now: float) -> list[tuple[str, str, str]]:
    """(method, path, body) of the distinct requests the load cycles through: about 10,000 users in all.
    Paths and bodies are URL-encoded, so they hold no whitespace. POST bodies hold UNIQUE_MARK. With
    several tokens, request v is for project v modulo their number."""
    variants = 1000 if shape.batch == 1 else max(10, 10_000 // shape.batch)
    if isinstance(tokens, str):
        tokens = (tokens,)
    out = []
    for v in range(variants):
        events = _events(tokens[v % len(tokens)], shape, v * shape.batch, now)
        if shape.batch == 1:
            data = _unique_get_data(events[0]) if shape.unique_gets else _base64(json.dumps(events[0]))
            out.append(("GET", f"/track/?data={urllib.parse.quote(data, safe='')}&ip=1&_={v}", ""))
        else:
            body = "data=" + urllib.parse.quote(json.dumps(events), safe="") + "&verbose=1&ip=0"
            out.append(("POST", "/track", body))
    return out
