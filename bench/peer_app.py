"""The peer: a /track endpoint the way a typical team would write it, to measure the gateway against.

FastAPI on uvicorn (uvicorn[standard]: uvloop and httptools, as `pip install uvicorn[standard]` gives
anyone), the standard library to decode (urllib.parse, base64, json), the checks a careful team writes
(a JSON object with a non-empty `event` name, `properties` an object, a known `token`, a numeric `time`
in seconds or milliseconds, `distinct_id` a string or a number), and one `XADD` per event with redis-py's
asyncio client, the batch's commands sent in one pipeline, over a pool of up to 100 connections. It
answers after the writes, `1`/`0` (or the `verbose=1` JSON), like Mixpanel. Nothing in it is slowed down
on purpose, nor tuned beyond that.

    PEER_REDIS_URL=redis://127.0.0.1:6379/0 PEER_TOKENS=t0k uvicorn peer_app:app --no-access-log

Settings (environment): PEER_REDIS_URL, PEER_TOKENS (comma-separated known tokens), PEER_STREAM_MAXLEN
(approximate trim of the stream, default 1,600,000 entries).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
import urllib.parse
from typing import Any

from fastapi import FastAPI, Request, Response
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

REDIS_URL = os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/0")
TOKENS = {token for token in os.environ.get("PEER_TOKENS", "").split(",") if token}
STREAM_MAXLEN = int(os.environ.get("PEER_STREAM_MAXLEN", "1600000"))
MAX_EVENTS = 2000
MAX_AGE_SECONDS = 3 * 3600

app = FastAPI()
# redis-py's asyncio pool refuses a 101st concurrent connection (MaxConnectionsError) by default; a team
# that load-tests its endpoint switches to the pool that waits for a free connection instead.
redis = Redis(connection_pool=BlockingConnectionPool.from_url(REDIS_URL, max_connections=100))


class InvalidEventError(ValueError):
    pass


def decode_data(data: str) -> list[Any]:
    """`data` is base64 of JSON (mixpanel-browser) or the JSON itself (mixpanel-python)."""
    data = data.strip()
    if not data.startswith(("{", "[")):
        data = base64.b64decode(data + "=" * (-len(data) % 4)).decode()
    payload = json.loads(data)
    events = payload if isinstance(payload, list) else [payload]
    if not events or len(events) > MAX_EVENTS:
        raise ValueError("a request holds 1 to 2000 events")
    return events


def validate(event: Any, now: float, ip: str | None) -> dict[str, Any]:
    if not isinstance(event, dict):
        raise InvalidEventError("event is not an object")
    name = event.get("event")
    if not isinstance(name, str) or not name or len(name) > 255:
        raise InvalidEventError("event name missing or invalid")
    properties = event.get("properties", {})
    if not isinstance(properties, dict):
        raise InvalidEventError("properties is not an object")
    token = properties.get("token")
    if not isinstance(token, str) or token not in TOKENS:
        raise InvalidEventError("unknown token")
    event_time = properties.get("time", now)
    if isinstance(event_time, bool) or not isinstance(event_time, int | float):
        raise InvalidEventError("time is not a number")
    if event_time > 1e11:
        event_time = event_time / 1000
    if event_time < now - MAX_AGE_SECONDS:
        raise InvalidEventError("time too old")
    distinct_id = properties.get("distinct_id")
    if distinct_id is not None:
        if isinstance(distinct_id, bool) or not isinstance(distinct_id, str | int | float):
            raise InvalidEventError("distinct_id is not a string or number")
        properties["distinct_id"] = str(distinct_id)
    properties["time"] = event_time
    if ip is not None:
        properties["ip"] = ip
    return {"event": name, "properties": properties, "received": now}


def answer(status: int, verbose: bool, error: str | None = None) -> Response:
    if verbose:
        body = json.dumps({"status": 0 if error else 1, "error": error})
        return Response(body, status_code=status, media_type="application/json")
    return Response("0" if error else "1", status_code=status, media_type="text/plain")


@app.get("/healthz")
async def healthz() -> Response:
    return Response("ok", media_type="text/plain")


@app.api_route("/track", methods=["GET", "POST"])
@app.api_route("/track/", methods=["GET", "POST"])
async def track(request: Request) -> Response:
    params = dict(request.query_params)
    if request.method == "POST":
        body = await request.body()
        params.update(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    verbose = params.get("verbose") == "1"
    try:
        events = decode_data(params.get("data", ""))
    except (ValueError, binascii.Error, UnicodeDecodeError) as err:
        return answer(400, verbose, f"invalid data: {err}")

    now = time.time()
    ip = request.client.host if params.get("ip") == "1" and request.client else None
    valid, errors = [], []
    for index, event in enumerate(events):
        try:
            valid.append(validate(event, now, ip))
        except InvalidEventError as err:
            errors.append(f"event {index}: {err}")

    if valid:
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for event in valid:
                    stream = f"events:{event['properties']['token']}"
                    pipe.xadd(stream, {"data": json.dumps(event)}, maxlen=STREAM_MAXLEN, approximate=True)
                await pipe.execute()
        except RedisError:
            return Response("0", status_code=503, headers={"Retry-After": "2"})
    if errors:
        return answer(400, verbose, "; ".join(errors[:10]))
    return answer(200, verbose)
