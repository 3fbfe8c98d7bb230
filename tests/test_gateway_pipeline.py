"""Several flushes in flight on one Redis connection: what is answered `1` is stored exactly once when
replies are lost, when Redis loses its function library, when Redis stalls; and the connection's set-up
(password, database) from the URL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests
from conftest import (
    Gateway,
    Load,
    RedisServer,
    ReplyDropper,
    create_project,
    free_port,
    stored_with,
    wait_for,
)
from trackgate import keys, store


def in_flight(gw: Gateway) -> float:
    text = requests.get(gw.url("/metrics"), timeout=5).text
    found = re.search(r"^trackgate_flushes_in_flight ([0-9.e+]+)$", text, re.MULTILINE)
    assert found, "trackgate_flushes_in_flight is not in /metrics"
    return float(found.group(1))


def stored_once(client: redis.Redis, token: str, load: Load) -> set[int]:
    """The load's stored sequence numbers, failing the test if one was stored twice."""
    seqs = Counter(e["properties"]["seq"] for e in stored_with(client, token, "run", load.run))
    twice = [seq for seq, n in seqs.items() if n > 1]
    assert not twice, f"{len(twice)} events were stored more than once"
    return set(seqs)


@pytest.fixture
def slow(private_redis: RedisServer, tmp_path: Path) -> Iterator[tuple[Gateway, ReplyDropper, str]]:
    """A gateway whose Redis answers 50 ms late, through a proxy that can also lose a reply; a load of
    eight clients posting 50 events each keeps several flushes in flight."""
    proxy = ReplyDropper(private_redis.port, delay=0.05)
    token = create_project(private_redis.url, "pipelined")
    gw = Gateway(tmp_path / "gw", "--pipeline-depth", "4", "--retry-window", "10", redis_url=proxy.url)
    gw.start()
    yield gw, proxy, token
    gw.stop()
    proxy.close()


def test_several_flushes_are_in_flight_under_load(slow: tuple[Gateway, ReplyDropper, str]) -> None:
    gw, _, token = slow
    load = Load(gw, token, threads=8, batch=50)
    try:
        load.start()
        wait_for(lambda: in_flight(gw) >= 2, 20, "two flushes in flight at once")
    finally:
        load.stop()


def test_lost_replies_with_several_flushes_in_flight_lose_and_repeat_nothing(
    slow: tuple[Gateway, ReplyDropper, str], private_redis: RedisServer
) -> None:
    gw, proxy, token = slow
    load = Load(gw, token, threads=8, batch=50)
    try:
        load.start()
        for round_ in range(3):
            wait_for(lambda: in_flight(gw) >= 2, 20, "several flushes in flight")
            proxy.dropped.clear()
            proxy.armed.set()
            wait_for(proxy.dropped.is_set, 20, f"lost reply {round_ + 1}")
        after = load.mark()
        wait_for(lambda: load.count(200, after) >= 50, 20, "answers after the last lost reply")
    finally:
        load.stop()
    assert {r[1] for r in load.results} == {200}, "a retried write was given up"
    stored = stored_once(private_redis.client(), token, load)
    assert load.acknowledged() <= stored
    assert gw.log().count("Redis connection lost") >= 3


def test_function_library_lost_under_load_is_loaded_again_and_nothing_is_lost(
    slow: tuple[Gateway, ReplyDropper, str], private_redis: RedisServer
) -> None:
    gw, _, token = slow
    client = private_redis.client()
    load = Load(gw, token, threads=8, batch=50)
    try:
        load.start()
        for _ in range(3):
            wait_for(lambda: in_flight(gw) >= 2, 20, "several flushes in flight")
            client.function_flush()
            mark = load.mark()
            wait_for(lambda m=mark: load.count(200, m) >= 20, 20, "answers after the library was flushed")
    finally:
        load.stop()
    assert {r[1] for r in load.results} == {200}
    assert load.acknowledged() <= stored_once(client, token, load)
    assert "loaded the trackgate function library again" in gw.log()
    # The events whose counting failed with the library were counted when it ran again, once.
    stored = sum(
        client.xlen(key)
        for key in client.scan_iter(match=keys.partitions_pattern(token) + keys.Family.STREAM)
    )
    assert counted_events(client, token) == stored


def stalled_under_load(redis_server: RedisServer, tmp_path: Path, name: str, *args: str) -> tuple[Load, str]:
    """A gateway with `args` under load while its Redis is stopped (SIGSTOP) for 2 s; its answers and log."""
    token = create_project(redis_server.url, name)
    gw = Gateway(tmp_path / "gw", *args, redis_url=redis_server.url)
    gw.start()
    assert redis_server.process is not None
    load = Load(gw, token, threads=6, batch=5)
    try:
        load.start()
        wait_for(lambda: load.count(200) >= 100, 20, "answers before the stall")
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            time.sleep(2.0)
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        mark = load.mark()
        wait_for(lambda: load.count(200, mark) >= 100, 20, "answers after the stall")
    finally:
        load.stop()
        gw.stop()
    assert load.acknowledged() <= stored_once(redis_server.client(), token, load)
    assert "no reply from Redis for" in gw.log()
    return load, gw.log()


def test_a_stalled_redis_counts_as_lost_and_the_writes_go_again(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    args = ("--redis-timeout", "0.5", "--retry-window", "10", "--pipeline-depth", "4")
    load, _ = stalled_under_load(private_redis, tmp_path, "stalled", *args)
    assert {r[1] for r in load.results} <= {200, 503}


def test_commands_of_a_lost_connection_that_reach_redis_late_are_not_applied_twice(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """The gateway gives up a silent connection and resends what it held; those commands then reach
    Redis after all. The gateway closed that connection in Redis first (CLIENT KILL), so they are not
    run: every event is stored once."""
    proxy = ReplyDropper(private_redis.port, late=2.0)
    token = create_project(private_redis.url, "late")
    gw = Gateway(
        tmp_path / "gw", "--redis-timeout", "0.5", "--retry-window", "10", redis_url=proxy.url
    )  # fmt: skip
    gw.start()
    load = Load(gw, token, threads=6, batch=5)
    try:
        load.start()
        wait_for(lambda: load.count(200) >= 50, 20, "answers before the stall")
        proxy.stall.set()
        wait_for(proxy.stalled.is_set, 20, "a connection gone silent")
        wait_for(lambda: proxy.late_delivered is not None, 20, "the held commands sent to Redis late")
        mark = load.mark()
        wait_for(lambda: load.count(200, mark) >= 50, 20, "answers after the late delivery")
    finally:
        load.stop()
        gw.stop()
        proxy.close()
    assert proxy.late_delivered is False, "Redis still took the lost connection's commands"
    assert {r[1] for r in load.results} == {200}
    assert load.acknowledged() <= stored_once(private_redis.client(), token, load)
    assert "no reply from Redis for" in gw.log()


def counted_events(client: redis.Redis, token: str) -> int:
    """The project's events as its hourly counters count them."""
    return sum(
        int(n)
        for key in client.scan_iter(match=keys.partitions_pattern(token) + keys.Family.HOURLY_COUNTS + "*")
        for n in client.hvals(key)
    )


def two_writes_answers_lost(
    redis_server: RedisServer,
    tmp_path: Path,
    name: str,
    first_goes_wrong: Callable[[redis.Redis], object],
    until_first_done: Callable[[redis.Redis, str, str], bool],
    then_right_again: Callable[[redis.Redis], object],
) -> tuple[list[int], str]:
    """A gateway whose Redis answers nobody (a muted proxy) writes two batches of one user, so of one
    partition: a first request of one event, made to go wrong in Redis by `first_goes_wrong`, then, once
    `until_first_done` and after `then_right_again`, one of 120 events (enough to be sent while the first
    waits for its answer). Both answers are lost; the gateway gives the connection up and settles.
    Returns the requests' statuses and the project's token."""
    proxy = ReplyDropper(redis_server.port)
    token = create_project(redis_server.url, name)
    gw = Gateway(tmp_path / "gw", "--redis-timeout", "3", "--retry-window", "20", redis_url=proxy.url)
    gw.start()
    admin = redis_server.client()
    run = uuid.uuid4().hex

    def post(first: int, count: int) -> requests.Response:
        events = [
            {"event": "e", "properties": {"token": token, "distinct_id": "one-user", "run": run, "i": i}}
            for i in range(first, first + count)
        ]
        return requests.post(gw.url("/track"), data={"data": json.dumps(events)}, timeout=60)

    try:
        assert requests.get(gw.url("/readyz"), timeout=5).status_code == 200
        proxy.mute.set()
        first_goes_wrong(admin)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, 0, 1)
            wait_for(lambda: until_first_done(admin, token, run), 10, "Redis taking the first write")
            then_right_again(admin)
            second = pool.submit(post, 1, 120)
            wait_for(lambda: len(stored_with(admin, token, "run", run)) >= 120, 10, "the second write")
            proxy.mute.clear()
            answers = [first.result(60).status_code, second.result(60).status_code]
    finally:
        then_right_again(admin)
        gw.stop()
        proxy.close()
    stored = Counter(e["properties"]["i"] for e in stored_with(admin, token, "run", run))
    assert stored == Counter(range(121)), f"an event is missing, or stored twice (answers: {answers})"
    assert "Redis connection lost" in gw.log()
    return answers, token


def test_a_write_redis_refused_whose_answer_was_lost_is_sent_again_not_taken_as_stored(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """Redis refuses a transaction when it is queued (out of memory here) and applies the next one for
    the same partition. The refused one is not in the partition's ring of applied batches, so it goes
    again, and is answered 200 only once stored."""
    before = int(private_redis.client().info("errorstats").get("errorstat_OOM", {}).get("count", 0))

    def refused(admin: redis.Redis, token: str, run: str) -> bool:
        return int(admin.info("errorstats").get("errorstat_OOM", {}).get("count", 0)) > before

    answers, token = two_writes_answers_lost(
        private_redis,
        tmp_path,
        "refused",
        lambda admin: admin.config_set("maxmemory", 1),
        refused,
        lambda admin: admin.config_set("maxmemory", 0),
    )
    assert answers == [200, 200]
    assert counted_events(private_redis.client(), token) == 121


def test_a_write_whose_counting_failed_and_whose_answer_was_lost_is_counted_once(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """Redis lost its function library: a transaction stores its event but its counting fails; the
    library is back (another worker loaded it) for the next transaction, which is counted. The first is
    in its partition's ring but not counted, so its counting alone goes again: counted once."""

    def stored(admin: redis.Redis, token: str, run: str) -> bool:
        return len(stored_with(admin, token, "run", run)) >= 1

    answers, token = two_writes_answers_lost(
        private_redis,
        tmp_path,
        "uncounted",
        lambda admin: admin.function_delete(store.LIBRARY),
        stored,
        lambda admin: admin.function_load(store.FUNCTION_SOURCE, replace=True),
    )
    assert answers == [200, 200]
    assert counted_events(private_redis.client(), token) == 121


def test_a_counting_whose_batch_left_the_ring_is_given_up_not_run_twice(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """A batch's counting failed (no library) and went again alone; it ran, but its answer was lost, and
    the partition's ring is gone by the time the gateway settles (here: deleted). Whether it ran cannot
    be known then, and its slot could be another batch's: it is given up and logged, not run again."""
    proxy = ReplyDropper(private_redis.port)
    token = create_project(private_redis.url, "ringless")
    gw = Gateway(tmp_path / "gw", "--redis-timeout", "3", "--retry-window", "20", redis_url=proxy.url)
    gw.start()
    admin = private_redis.client()
    event = {"event": "e", "properties": {"token": token, "distinct_id": "one-user"}}
    try:
        assert requests.get(gw.url("/readyz"), timeout=5).status_code == 200
        proxy.mute_after = b"unction not found"
        admin.function_delete(store.LIBRARY)
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(
                requests.post, gw.url("/track"), data={"data": json.dumps(event)}, timeout=60
            )
            wait_for(proxy.mute.is_set, 10, "the failed counting's answer")
            wait_for(lambda: counted_events(admin, token) == 1, 10, "the counting alone, run again")
            for ring in admin.scan_iter(match=keys.PREFIX + "{*}:" + keys.Family.MARKS + "*"):
                admin.delete(ring)
            proxy.mute.clear()
            status = answer.result(60).status_code
    finally:
        admin.function_load(store.FUNCTION_SOURCE, replace=True)
        gw.stop()
        proxy.close()
    assert status == 200
    assert counted_events(admin, token) == 1
    assert (
        sum(admin.xlen(k) for k in admin.scan_iter(match=keys.partitions_pattern(token) + keys.Family.STREAM))
        == 1
    )
    assert "not counted: its batch has left the partition's ring" in gw.log()


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[tuple[int, str]]:
    port, password = free_port(), uuid.uuid4().hex
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--requirepass", password, "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip

    def answers() -> bool:
        try:
            with redis.Redis(port=port, password=password, socket_timeout=0.2) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        wait_for(answers, 10, "redis-server with a password answering")
        yield port, password
    finally:
        process.terminate()
        process.wait(10)


def test_the_url_gives_password_and_database(password_redis: tuple[int, str], tmp_path: Path) -> None:
    port, password = password_redis
    url = f"redis://:{password}@127.0.0.1:{port}/3"
    token = create_project(url, "db3")
    gw = Gateway(tmp_path / "gw", redis_url=url)
    gw.start()
    try:
        run = uuid.uuid4().hex
        events = [{"event": "e", "properties": {"token": token, "run": run, "i": i}} for i in range(7)]
        r = requests.post(gw.url("/track"), data={"data": json.dumps(events)}, timeout=10)
        assert (r.status_code, r.text) == (200, "1")
    finally:
        gw.stop()
    with redis.Redis(port=port, password=password, db=3) as client:
        assert len(stored_with(client, token, "run", run)) == 7
    with redis.Redis(port=port, password=password, db=0) as client:
        assert client.dbsize() == 0


def test_a_wrong_password_stops_serve_with_a_clear_message(
    password_redis: tuple[int, str], tmp_path: Path
) -> None:
    port, password = password_redis
    gw = Gateway(tmp_path / "gw", redis_url=f"redis://:not-{password}@127.0.0.1:{port}/0")
    with pytest.raises(RuntimeError, match="trackgate serve exited"):
        gw.start()
    assert "trackgate: error: AuthenticationError" in gw.log()


def test_a_redis_user_without_client_commands_writes_and_is_told_what_a_retry_risks(
    private_redis: RedisServer, tmp_path: Path, http: requests.Session
) -> None:
    """CLIENT ID and CLIENT KILL are what make a retry after a lost connection exact. A Redis user
    without them still writes; a retry then logs what it cannot rule out, and what permission to add."""
    password = uuid.uuid4().hex
    with private_redis.client() as admin:
        admin.execute_command(
            "ACL",
            "SETUSER",
            "writer",
            "on",
            f">{password}",
            "~*",
            "&*",
            "+@all",
            "-client|id",
            "-client|kill",
        )
    token = create_project(private_redis.url, "acl")
    proxy = ReplyDropper(private_redis.port)
    gw = Gateway(
        tmp_path / "gw", "--retry-window", "5", redis_url=f"redis://writer:{password}@127.0.0.1:{proxy.port}"
    )
    gw.start()
    try:
        run = uuid.uuid4().hex
        events = [{"event": "e", "properties": {"token": token, "run": run, "i": i}} for i in range(5)]
        proxy.armed.set()  # the first write's reply is lost: the retry has no connection id to close
        r = http.post(gw.url("/track"), data={"data": json.dumps(events)}, timeout=10)
        assert (r.status_code, r.text) == (200, "1")
    finally:
        gw.stop()
        proxy.close()
    assert proxy.dropped.is_set()
    assert len(stored_with(private_redis.client(), token, "run", run)) == 5
    assert "the Redis user needs +client|id and +client|kill" in gw.log()


def test_writes_of_a_connection_lost_to_a_stall_are_settled_not_given_up(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """A stall longer than --redis-timeout but shorter than it plus --retry-window: the writes that were
    in flight are found applied (or resent) once Redis answers again, not answered 503 because they were
    sent more than --retry-window ago. (With the defaults, 3 s and 2 s, any watchdog loss is such.)"""
    args = ("--redis-timeout", "1.5", "--retry-window", "1")
    load, _ = stalled_under_load(private_redis, tmp_path, "settled", *args)
    assert {r[1] for r in load.results} == {200}
