"""The official clients' captured requests (`spec/captures/`): read, decoded with the standard library
only, and replayed byte for byte against a gateway."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
from conftest import Gateway

CAPTURES = Path(__file__).resolve().parent / "spec" / "captures"
CAPTURED_TOKEN = "e3bc4100330c35722740fb8c6f5abddc"
"""The token the captured clients were configured with."""
PYTHON_PEOPLE = "people/mixpanel-python-5.4.1-people.jsonl"
BROWSER_PEOPLE = "people/mixpanel-browser-2.82.1-people.jsonl"


def captured(name: str, routes: tuple[str, ...]) -> list[dict[str, Any]]:
    """The captured requests of a file (under CAPTURES) to `routes`, in the order sent."""
    lines = [json.loads(line) for line in (CAPTURES / name).read_text().splitlines()]
    return [line for line in lines if urlsplit(line["path"]).path.rstrip("/") in routes]


def sent_objects(capture: dict[str, Any]) -> list[dict[str, Any]]:
    """The events or updates of a captured request."""
    params = dict(parse_qsl(urlsplit(capture["path"]).query))
    params.update(parse_qsl(base64.b64decode(capture["body_b64"]).decode()))
    data = params["data"]
    text = data if data.lstrip()[:1] in ("{", "[") else base64.b64decode(data).decode()
    sent = json.loads(text)
    return sent if isinstance(sent, list) else [sent]


def replay(gateway: Gateway, capture: dict[str, Any]) -> requests.Response:
    headers = {
        name: capture["headers"][name] for name in ("content-type", "origin") if name in capture["headers"]
    }
    body = base64.b64decode(capture["body_b64"])
    return requests.request(
        capture["method"], gateway.url(capture["path"]), data=body or None, headers=headers, timeout=10
    )
