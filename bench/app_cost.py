"""trackgate's own CPU per request, without the HTTP server: the number to watch when changing the
Python path.

wrk's numbers move from minute to minute on a shared machine, by more than most changes to the gateway's
code are worth. This script takes the HTTP server and the load generator out: it runs trackgate's RSGI
app (`trackgate.gateway.app.App`, with its batcher and a private redis-server) in this process, on
uvloop, and calls it with in-memory requests from `--callers` concurrent callers, each request in its
own asyncio Task as Granian makes it. It reads the CPU time of this one process, which other work on the
machine hardly moves, for three handlers called the same way, alternated round by round:

- nothing: the do-nothing handler of bench/ceiling_app.py (what calling a handler costs here);
- no Redis: trackgate's app with its batcher replaced by an answer that is already there (the handler and
  the decoder);
- trackgate: the whole app, its events written to Redis (the batcher, the Redis connection's system
  calls; not Redis's own CPU, which is another process).

trackgate's cost per request is its line minus the first. The gateway under wrk spends more than this
per request: Granian's share (HTTP, handing each request to the event loop and back) is what the
ceiling's CPU per request shows in `make bench`.

    .venv/bin/python bench/app_cost.py                 # GET 1 and POST 50
    .venv/bin/python bench/app_cost.py --batch 1 --rounds 9
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop
from ceiling_app import Ceiling
from processes import run_main, servers_stopped_on_exit
from redis.asyncio import Redis
from redis_servers import start_redis
from trackgate import projects
from trackgate.flush import ALL_STORED, Written
from trackgate.gateway.app import GC_THRESHOLD, App, Services
from trackgate.settings import Settings
from workloads import Shape, requests_for, with_marks_filled

Handler = Callable[[Any, Any], Awaitable[None]]


class _Headers:
    __slots__ = ("_values",)

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values

    def get(self, key: str, default: str | None = None) -> str | None:
        return self._values.get(key, default)

    def get_all(self, key: str) -> list[str]:
        return [self._values[key]] if key in self._values else []


class _Scope:
    """What the app reads of Granian's scope."""

    __slots__ = ("client", "headers", "method", "path", "query_string")

    def __init__(self, method: str, path: str, query: str, headers: _Headers) -> None:
        self.method, self.path, self.query_string, self.headers = method, path, query, headers
        self.client = "127.0.0.1:50000"


class _Proto:
    """What the app uses of Granian's protocol: the body, and one response."""

    __slots__ = ("_body", "status")

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.status = 0

    async def __call__(self) -> bytes:
        return self._body

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status


class _Stored:
    """The batcher's place when Redis is left out: every request's events are in Redis at once."""

    not_ready_reason: str | None = None
    primaries: dict[str, str | None] = {}  # noqa: RUF012  # one Redis: none, and never changed

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._done: asyncio.Future[Written] = loop.create_future()
        self._done.set_result(ALL_STORED)

    def submit(self, batches: Any, count: int) -> asyncio.Future[Written]:
        return self._done

    async def close(self) -> None:
        return None


async def _cpu_per_request(
    handler: Handler, requests: list[tuple[_Scope, bytes]], callers: int, n: int
) -> float:
    loop = asyncio.get_running_loop()

    async def one(scope: _Scope, body: bytes) -> None:
        proto = _Proto(body)
        await handler(scope, proto)
        if proto.status != 200:
            raise RuntimeError(f"a request was answered {proto.status}")

    async def caller(first: int) -> None:
        for i in range(first, first + n // callers):
            scope, body = requests[i % len(requests)]
            await loop.create_task(one(scope, body))

    started = time.process_time()
    await asyncio.gather(*(caller(c * 7919) for c in range(callers)))
    return (time.process_time() - started) / (n // callers * callers)


async def _measure(
    url: str, token: str, batch: int, callers: int, n: int, rounds: int
) -> dict[str, list[float]]:
    admin = Redis.from_url(url)
    await projects.create_project(admin, f"app-cost-{batch}", token=token)
    await admin.aclose()
    requests = []
    for method, target, marked in requests_for(token, Shape(batch), time.time()):
        body = with_marks_filled(marked)  # no Redis here: events repeated cost what new ones do
        path, _, query = target.partition("?")
        headers = {"host": "bench", "user-agent": "app_cost"}
        if body:
            headers |= {"content-type": "application/x-www-form-urlencoded", "content-length": str(len(body))}
        requests.append((_Scope(method, path, query, _Headers(headers)), body.encode()))

    settings = Settings(redis_url=url)
    app = App()
    await app.start(settings)
    no_redis = App()
    services = await Services.from_settings(settings)
    await services.sink.close()
    services.sink = _Stored(asyncio.get_running_loop())
    await no_redis.start(settings, services)
    # As each worker does after start-up (App.__rsgi_init__).
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 10, 10)
    handlers: dict[str, Handler] = {
        "nothing": Ceiling().__rsgi__,
        "no Redis": no_redis.__rsgi__,
        "trackgate": app.__rsgi__,
    }
    for handler in handlers.values():  # warm-up
        await _cpu_per_request(handler, requests, callers, min(n, 2000))
    results: dict[str, list[float]] = {name: [] for name in handlers}
    for r in range(rounds):
        for name in list(handlers)[:: 1 if r % 2 == 0 else -1]:
            results[name].append(await _cpu_per_request(handlers[name], requests, callers, n))
    await app.stop()
    await no_redis.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--batch", type=int, action="append", help="events per request: 1 is a GET (default 1 and 50)"
    )
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers (default 64)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=100_000, help="events per handler per round")
    args = parser.parse_args()
    with servers_stopped_on_exit(), tempfile.TemporaryDirectory(prefix="trackgate-app-cost-") as tmp:
        _, url = start_redis(Path(tmp), "redis", unix=True)
        print(f"trackgate's CPU per request in one process (median of {args.rounds} alternated rounds)")
        for batch in args.batch or [1, 50]:
            n = max(args.callers, args.events // batch)
            results = uvloop.run(
                _measure(url, f"appcost{batch:04d}token", batch, args.callers, n, args.rounds)
            )
            base = statistics.median(results["nothing"])
            label = Shape(batch).label
            for name, values in results.items():
                cost = statistics.median(values)
                spread = (max(values) - min(values)) / cost
                extra = "" if name == "nothing" else f"   trackgate's: {1e6 * (cost - base):6.2f} µs"
                print(
                    f"  {label:16} {name:10} {1e6 * cost:7.2f} µs per request (spread {spread:4.0%}){extra}"
                )
    return 0


if __name__ == "__main__":
    run_main(main)
