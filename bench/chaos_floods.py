"""Chaos scenarios in which clients ask too much at once: report clients beside ingestion, a flood of new
event names, large uploads all at once, and more stalled uploads than a worker has places. Each audits
the project at the end (chaos_audit)."""

from __future__ import annotations

import datetime as dt
import http.client
import inspect
import json
import selectors
import socket
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import redis
from chaos_audit import project_keys
from chaos_load import FORM, NO_ANSWER, Answer, Answers
from chaos_scenario import MIB, Context, Scenario, memory, wait_for
from report_load import DAYS, EXPORTS, REPORT_CLIENTS, fill, start_report_clients
from targets import Target, demo_reports, gateway_settings
from trackgate import bounds, keys
from wrk import finish_wrk


def reports_beside_ingestion(ctx: Context) -> None:
    redis_server = ctx.redis()
    gateway = ctx.gateway(redis_server, "--max-age", str((DAYS + 1) * 86400))
    reports, secret = demo_reports(gateway)
    now = time.time()
    names = ctx.pick(1000, 200)
    filled = fill(gateway, names, now)
    load = ctx.load(gateway)
    wait_for(lambda: len(load.answers.acknowledged()) > 0, 60, "the first answers 1")
    time.sleep(ctx.pick(5, 2))
    seconds = ctx.pick(12, 4)
    end_day = dt.datetime.fromtimestamp(now, dt.UTC).date()
    begin = ctx.fault_begins()
    clients = start_report_clients(ctx.work, reports, secret, end_day, seconds, REPORT_CLIENTS, EXPORTS)
    counts, exports = (finish_wrk(client, seconds + 120) for client in clients)
    end = ctx.fault_ends()
    time.sleep(ctx.pick(5, 2))
    ctx.stop_loads()
    ctx.audit(gateway)
    ctx.figures.update(
        {
            "names": names,
            "days": DAYS,
            "events_filled": filled,
            "event_count_reports": wrk_answers(counts),
            "exports_finished": wrk_answers(exports),
        }
    )
    ctx.check(counts["requests"] > counts["non_2xx"], "no report of event counts was answered 200")
    ctx.check(load.answers.acknowledged_between(begin, end) > 0, "/track stored nothing beside the reports")


def wrk_answers(result: dict[str, Any]) -> dict[str, int]:
    """What wrk's clients were answered (a request still streaming when wrk stops is not counted)."""
    return {"answered": result["requests"], "not_2xx": result["non_2xx"], "timeouts": result["timeouts"]}


def name_flood(ctx: Context) -> None:
    redis_server = ctx.redis()
    gateway = ctx.gateway(redis_server)
    names = ctx.pick(20_000, 5_000)
    with redis_server.client() as admin:
        before = int(admin.info("memory")["used_memory"])
        started = time.monotonic()
        load = ctx.load(gateway, clients=2, batch=200, name=lambda seq: f"flood {seq}", limit=names)
        wait_for(load.finished, 300, f"{names} events of new names sent")
        seconds = time.monotonic() - started
        ctx.stop_loads()
        counted = ctx.audit(gateway).counted_events
        after = int(admin.info("memory")["used_memory"])
        check_name_caps(ctx, admin, gateway.token, counted)
    ctx.figures.update(
        {
            "names_sent": names,
            "flood_events_per_s": round(names / seconds),
            "redis_used_memory_growth_mib": round((after - before) / MIB, 1),
        }
    )


def check_name_caps(ctx: Context, admin: redis.Redis, token: str, counted: int) -> None:
    """Each partition and day holds at most the cap's names (and the overflow name): in its name set, as
    HyperLogLogs of users, and as hourly fields. Of the `counted` events, each of a name of its own, as
    many are counted under their own name as names were admitted, the rest under the overflow name."""
    cap = bounds.DEFAULT_CAPS.event_names_per_day  # the demo project's
    over: list[str] = []
    admitted = overflowed = counter_bytes = 0
    users: Counter[bytes] = Counter()
    for key in project_keys(admin, token, keys.Family.DAILY_USERS):
        users[key.rsplit(b":", 1)[0]] += 1  # per partition and day
        counter_bytes += int(admin.memory_usage(key) or 0)
    for key in project_keys(admin, token, keys.Family.EVENT_NAMES):
        members = int(admin.scard(key))
        admitted += members - int(admin.sismember(key, bounds.OVERFLOW))
        counter_bytes += int(admin.memory_usage(key) or 0)
        if members > cap + 1:
            over.append(f"{key.decode()} holds {members} names")
    for key in project_keys(admin, token, keys.Family.HOURLY_COUNTS):
        fields = cast(dict[bytes, bytes], admin.hgetall(key))
        overflowed += sum(int(n) for f, n in fields.items() if f.decode()[3:] == bounds.OVERFLOW)
        counter_bytes += int(admin.memory_usage(key) or 0)
        if len(fields) > 24 * (cap + 1):
            over.append(f"{key.decode()} has {len(fields)} fields")
    over += [f"{day.decode()} has {n} HyperLogLogs" for day, n in users.items() if n > cap + 1]
    ctx.figures.update(
        {
            "cap_per_partition_and_day": cap,
            "names_admitted": admitted,
            "events_overflowed": overflowed,
            "counter_bytes_per_admitted_name": round(counter_bytes / admitted) if admitted else None,
        }
    )
    ctx.check(not over, "past the name cap: " + "; ".join(over[:5]))
    ctx.check(overflowed > 0, "no event was counted as overflow, though the names exceed the caps")
    ctx.check(
        counted - overflowed == admitted,
        f"{counted - overflowed} events counted under their own names, {admitted} names admitted",
    )


UPLOADS = 200
EVENTS_PER_UPLOAD = 10
BLOB = b"x" * 985_000
"""An event of about 1 MB, within the decoder's limit on an event's size: ten make a 10 MB upload."""
BODY_MARGIN = 4
"""What a worker holds beside the bodies its budget counts, in budgets: per body, Granian's copy as it
hands it over, the decoded data, the normalised events and their packed writes (each about the body's
size); plus UPLOAD_SLACK for the allocator's."""
UPLOAD_SLACK = 64 * MIB


def upload_body(run: str, token: str, first: int) -> tuple[list[bytes], int]:
    """The chunks of a form body of EVENTS_PER_UPLOAD large events, numbered from `first`, and its length:
    the events share one blob, so that 200 uploads in flight do not hold 2 GB in the client."""
    chunks = [b"data=["]
    for seq in range(first, first + EVENTS_PER_UPLOAD):
        properties = {"token": token, "distinct_id": f"u{seq % 1000}", "run": run, "seq": seq}
        head = json.dumps(properties)[:-1]  # the object left open for the blob
        chunks += [b'{"event": "upload", "properties": ', head.encode(), b', "blob": "', BLOB, b'"}}', b", "]
    chunks[-1] = b"]"
    return chunks, sum(len(chunk) for chunk in chunks)


def upload(target: Target, answers: Answers, n: int) -> None:
    first = n * EVENTS_PER_UPLOAD
    chunks, length = upload_body(answers.run, target.token, first)
    host, port = target.base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    sent = time.monotonic()
    try:
        connection.request("POST", "/track", iter(chunks), {**FORM, "Content-Length": str(length)})
        response = connection.getresponse()
        answer = Answer(
            first, EVENTS_PER_UPLOAD, response.status, response.read(), response.getheader("retry-after"),
            sent, time.monotonic(),
        )  # fmt: skip
    except (OSError, http.client.HTTPException):  # refused while still sending: the connection closed
        answer = Answer(first, EVENTS_PER_UPLOAD, NO_ANSWER, b"", None, sent, time.monotonic())
    finally:
        connection.close()
    answers.record(answer)


def large_uploads(ctx: Context) -> None:
    redis_server = ctx.redis()
    gateway = ctx.gateway(redis_server)
    budget = gateway_settings(1, []).max_body_bytes_in_flight
    uploads = ctx.pick(UPLOADS, 50)
    [worker] = gateway.server.worker_pids()
    before = memory(worker, "VmRSS")
    answers = Answers()
    ctx.other_answers.append(answers)
    with ThreadPoolExecutor(max_workers=uploads) as pool:
        list(pool.map(lambda n: upload(gateway, answers, n), range(uploads)))
    peak = memory(worker)
    ctx.audit(gateway)
    kinds = answers.kinds()
    ctx.figures.update(
        {
            "uploads": uploads,
            "upload_mib": round(upload_body(answers.run, gateway.token, 0)[1] / MIB, 1),
            "accepted": kinds["1"],
            "budget_mib": budget / MIB,
            "worker_rss_before_mib": round(before / MIB, 1),
            "worker_rss_growth_mib": round((peak - before) / MIB, 1),
            "worker_rss_bound_mib": (budget * (1 + BODY_MARGIN) + UPLOAD_SLACK) / MIB,
        }
    )
    ctx.check(kinds["1"] > 0, "no upload was accepted")
    ctx.check(
        peak - before < budget * (1 + BODY_MARGIN) + UPLOAD_SLACK,
        f"the worker grew by {(peak - before) / MIB:.0f} MiB, past its budget and margin",
    )


def places(workers: int, gateway_args: list[str]) -> int:
    """Requests a worker handles at once (Granian's backpressure): the setting, else Granian's backlog
    divided by the workers, as Granian derives it."""
    from granian import Granian

    backpressure = gateway_settings(workers, gateway_args).backpressure
    backlog = int(inspect.signature(Granian).parameters["backlog"].default)
    return backpressure or backlog // workers


STALLED_BODY = 2_000
"""Bytes each stalled upload announces, a browser's batch: 1,100 of them take 2 MB of the worker's budget of
body bytes (--max-body-bytes-in-flight), so that what they exhaust is its places. (Uploads of 100 kB
would pass the budget first: the requests past it, the other clients' included, are answered 503.)"""


def stalled_uploads(address: tuple[str, int], count: int) -> Iterator[socket.socket]:
    """`count` connections, each sending a POST's headers and the first bytes of its body, then nothing."""
    head = (
        b"POST /track HTTP/1.1\r\nHost: chaos\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\ndata=" % STALLED_BODY
    )
    for _ in range(count):
        sock = socket.create_connection(address, timeout=10)
        sock.sendall(head)
        sock.setblocking(False)
        yield sock


def answers_of(sockets: list[socket.socket], timeout: float) -> list[tuple[float, int]]:
    """(when, status) of each stalled upload's answer, status NO_ANSWER for a connection closed without
    one; those still waiting after `timeout` seconds are left out."""
    selector = selectors.DefaultSelector()
    for sock in sockets:
        selector.register(sock, selectors.EVENT_READ, bytearray())
    found: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(0.5):
            sock, data = cast(socket.socket, key.fileobj), key.data
            try:
                chunk = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            data += chunk
            if not chunk or b"\r\n" in data:
                status = int(data.split()[1]) if data.startswith(b"HTTP/") else NO_ANSWER
                found.append((time.monotonic(), status))
                selector.unregister(sock)
                sock.close()
    for key in list(selector.get_map().values()):
        cast(socket.socket, key.fileobj).close()
    return found


def slow_uploads(ctx: Context) -> None:
    args = ctx.pick([], ["--body-timeout", "3", "--backpressure", "100"])
    room = places(1, args)
    count = room + ctx.pick(76, 10)  # more than the worker's places: some wait for a place to stall in
    body_timeout = gateway_settings(1, args).body_timeout
    redis_server = ctx.redis()
    gateway = ctx.gateway(redis_server, *args)
    kept = ctx.load(gateway, clients=2)
    new = ctx.load(gateway, clients=2, keep_alive=False)
    wait_for(lambda: len(new.answers.acknowledged()) > 0, 60, "the first answers 1")
    time.sleep(ctx.pick(3, 1))
    begin = ctx.fault_begins()
    host, port = gateway.base.removeprefix("http://").split(":")
    sockets = list(stalled_uploads((host, int(port)), count))
    opened = time.monotonic()
    answered = answers_of(sockets, 3 * body_timeout + 30)
    end = ctx.fault_ends()
    time.sleep(ctx.pick(3, 1))
    ctx.stop_loads()
    ctx.audit(gateway)
    waits = {
        load: max((a.answered - a.sent for a in load.answers.all() if begin <= a.sent < end), default=0.0)
        for load in (kept, new)
    }
    statuses = Counter(str(status) if status else "no answer" for _, status in answered)
    ctx.figures.update(
        {
            "places": room,
            "stalled_uploads": count,
            "opened_in_s": round(opened - begin, 2),
            "stalled_answers": dict(statuses),
            "last_stalled_answered_after_s": round(max(t for t, _ in answered) - begin, 2)
            if answered
            else None,
            "body_timeout_s": body_timeout,
            "track_longest_wait_s": round(waits[kept], 2),
            "track_longest_wait_on_new_connections_s": round(waits[new], 2),
        }
    )
    ctx.check(len(answered) == count, f"{count - len(answered)} stalled uploads were never answered")
    ctx.check(
        set(statuses) <= {"408", "no answer"},
        f"stalled uploads answered otherwise than 408: {dict(statuses)}",
    )


SCENARIOS = (
    Scenario(
        "reports",
        "8 report clients (30 days of event counts, no pause) and 2 exports against a project of 1,000 "
        "names over 30 days, beside /track load",
        "reports answered (those past --max-report-requests 429); /track goes on storing beside them",
        reports_beside_ingestion,
    ),
    Scenario(
        "name-flood",
        "20,000 new event names in a few seconds (5,000 with --quick)",
        "each partition and day holds at most the cap's names; the rest counted as $overflow",
        name_flood,
    ),
    Scenario(
        "uploads",
        "200 uploads of 10 MB at once (50 with --quick)",
        "the worker's memory within its --max-body-bytes-in-flight budget plus a margin; every upload "
        "answered 1 stored",
        large_uploads,
    ),
    Scenario(
        "slow-uploads",
        "more stalled uploads than the worker has places (1,100 for Granian's 1,024; 110 for 100 with "
        "--quick, whose --body-timeout is 3 s) beside /track load",
        "every stalled upload answered 408 after --body-timeout; /track answered again",
        slow_uploads,
    ),
)
