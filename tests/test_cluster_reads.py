"""Everything that reads, on a Redis Cluster (3 primaries, a replica each: real redis-server processes):
the same traffic written to one Redis and to the cluster gives the same funnel reports, event counts,
profiles, exports and consumed entries, number for number, through the query API (in process), the
report functions and the CLI.

The traffic is written as the batcher writes it, one transaction per partition batch, each sent to the
primary that owns the partition's slot (conftest's `send_write`), after the function library was loaded
on every primary by `store.load_functions`."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import itertools
import json
import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
from conftest import (
    PARTITIONS,
    TRACKGATE,
    Gateway,
    RedisServer,
    create_project_keys,
    send_write,
    stream_entries,
    wait_for,
)
from memory_gateway import Headers, Proto, Scope
from redis_cluster import Cluster, Node
from trackgate import Options, decode_request, engage, export, keys, redis_target, store
from trackgate._native import decode_profile_request
from trackgate.api import Api
from trackgate.cluster_reads import key_of
from trackgate.funnels import funnel_report, list_funnels
from trackgate.redis_pipe import pack
from trackgate.report_reads import Command, ReportReads
from trackgate.settings import Settings

DAY = 86400
NOW = time.time()
# Two whole UTC days before today: every event is in the past, and within MAX_AGE (the writes' and the
# exports').
D0 = dt.datetime.fromtimestamp(NOW, dt.UTC).date() - dt.timedelta(days=2)
D1 = D0 + dt.timedelta(days=1)
START = dt.datetime(D0.year, D0.month, D0.day, tzinfo=dt.UTC).timestamp()
USERS = [f"user-{i:02d}" for i in range(40)]
NAMES = ["view", "search", "Sign up", "buy"]
MAX_AGE = 5 * DAY
OPTIONS = Options(partitions=PARTITIONS, max_age=MAX_AGE)


def event_requests(token: str) -> list[list[dict[str, Any]]]:
    """Requests of plain events and funnel steps over the two days, the same for every run of the module."""
    rng = random.Random(16)
    requests = []
    for r in range(16):
        events = []
        for i in range(12):
            user = rng.choice(USERS)
            properties = {"token": token, "distinct_id": user, "time": START + rng.randrange(2 * DAY - 60)}
            properties |= {"$insert_id": f"{r}-{i}", "price": rng.randrange(100)}
            if rng.random() < 0.4:
                step = rng.randrange(1, 4)
                properties |= {"funnel": "signup", "step": step, "goal": f"goal {step}"}
                events.append({"event": "mp_funnel", "properties": properties})
            else:
                events.append({"event": rng.choice(NAMES), "properties": properties})
        requests.append(events)
    return requests


def profile_requests(token: str) -> list[tuple[bool, list[dict[str, Any]]]]:
    """(groups?, updates): a profile per user, some changed again, and two groups."""
    people = [
        {"$token": token, "$distinct_id": u, "$set": {"n": i, "plan": "free"}} for i, u in enumerate(USERS)
    ]
    again = [{"$token": token, "$distinct_id": u, "$add": {"visits": 2}} for u in USERS[::3]]
    groups = [
        {"$token": token, "$group_key": "company", "$group_id": c, "$set": {"seats": s}}
        for c, s in (("acme", 40), ("globex", 3))
    ]
    return [(False, people), (False, again), (True, groups)]


class Deployment:
    """One Redis or the cluster, holding the project (the same token in both) and the traffic."""

    def __init__(self, url: str, nodes: dict[int, redis.Redis], token: str, secret: str) -> None:
        self.url = url
        self.nodes = nodes  # partition -> a client of the node that owns its slot
        self.token = token
        self.secret = secret
        self.writer = uuid.uuid4().hex[:12].encode()
        self.seq = 0

    def write(self) -> None:
        for events in event_requests(self.token):
            body = json.dumps(events).encode()
            request = decode_request(b"", body, "application/json", now=NOW, options=OPTIONS)
            assert request.errors == []
            self._send(request.batches)
        for groups, updates in profile_requests(self.token):
            body = json.dumps(updates).encode()
            profiles = decode_profile_request(
                b"", body, "application/json", groups=groups, now=NOW, options=OPTIONS
            )
            assert profiles.errors == []
            self._send(profiles.batches)

    def _send(self, batches: list[Any]) -> None:
        for batch in batches:
            self.seq += 1
            reply = send_write(self.nodes[batch.partition], self.writer, self.seq, [batch])
            assert isinstance(reply, list), reply
            assert isinstance(reply[-1], list), reply

    def run(self, coroutine: Any) -> Any:
        return asyncio.run(coroutine)

    async def reads(self, action: Any) -> Any:
        reads = ReportReads(self.url, 10)
        try:
            return await action(reads)
        finally:
            reads.close()

    async def client(self, action: Any) -> Any:
        client = redis_target.client(redis_target.parse(self.url), timeout=10, connect_timeout=5)
        try:
            return await action(client)
        finally:
            await client.aclose()

    def api(self, path: str, query: str = "") -> tuple[int, bytes]:
        """The query API's answer (in process, as the reports process serves it)."""

        async def call(client: Any) -> tuple[int, bytes]:
            reads = ReportReads(self.url, 10)
            try:
                api = Api(client, reads, Settings(redis_url=self.url, max_age=MAX_AGE))
                auth = "Basic " + base64.b64encode(f"{self.secret}:".encode()).decode()
                proto = Streamed()
                await api(Scope("GET", path, query, "127.0.0.1", Headers([("authorization", auth)])), proto)
                return proto.status, proto.body
            finally:
                reads.close()

        answer: tuple[int, bytes] = self.run(self.client(call))
        return answer


class Streamed(Proto):
    """A client of the API that takes a streamed answer (an export) whole."""

    def __init__(self) -> None:
        super().__init__([])

    def response_stream(self, status: int, headers: list[tuple[str, str]]) -> Any:
        self.status, self.headers = status, headers
        return self

    async def send_bytes(self, data: bytes) -> None:
        self.body += data


@pytest.fixture(scope="module")
def deployments(redis_server: RedisServer, redis_cluster: Cluster) -> Iterator[tuple[Deployment, Deployment]]:
    """The same project and traffic in the suite's Redis and in the cluster."""
    token, name = f"cr{uuid.uuid4().hex[:14]}", f"cluster reads {uuid.uuid4().hex[:6]}"
    _, secret = create_project_keys(redis_server.url, name, token)
    _, cluster_secret = create_project_keys(redis_cluster.url, name, token)
    single = Deployment(
        redis_server.url, dict.fromkeys(range(PARTITIONS), redis_server.client()), token, secret
    )
    owners = {p: redis_cluster.owner(keys.stream_key(token, p)).client() for p in range(PARTITIONS)}
    assert len({client.connection_pool.connection_kwargs["port"] for client in owners.values()}) > 1
    spread = Deployment(redis_cluster.url, owners, token, cluster_secret)
    for deployment in (single, spread):
        deployment.run(deployment.client(lambda client: store.load_functions(client, replace=True)))
        deployment.write()
    yield single, spread
    for deployment in (single, spread):
        for client in deployment.nodes.values():
            client.close()


def test_the_library_is_loaded_on_every_primary(redis_cluster: Cluster, deployments: Any) -> None:
    for node in redis_cluster.primaries():
        with node.client() as client:
            # Each library a flat list of names and values (RESP2): library_name first.
            assert [lib[:2] for lib in client.function_list()] == [[b"library_name", store.LIBRARY.encode()]]


def test_funnel_reports_are_equal(deployments: tuple[Deployment, Deployment]) -> None:
    single, spread = deployments
    answers = []
    for deployment in deployments:

        async def read(client: Any, d: Deployment = deployment) -> Any:
            return (
                await funnel_report(client, d.token, PARTITIONS, "signup", D0, D1),
                await list_funnels(client, d.token, PARTITIONS),
            )

        answers.append(deployment.run(deployment.client(read)))
    assert answers[0] == answers[1]
    report, _ = answers[0]
    assert report is not None
    assert report.steps[0].users > 0
    query = f"from={D0}&to={D1}"
    assert single.api("/api/funnels/signup", query) == spread.api("/api/funnels/signup", query)
    assert single.api("/api/funnels") == spread.api("/api/funnels")


@pytest.mark.parametrize(
    "query",
    [
        f"from={D0}&to={D1}",
        f"from={D0}&to={D1}&unit=hour",
        f"from={D0}&to={D1}&event=buy",
        f"from={D1}&to={D1}&limit=2&offset=1",
    ],
)
def test_event_counts_are_equal(deployments: tuple[Deployment, Deployment], query: str) -> None:
    single, spread = deployments
    status, body = single.api("/api/events", query)
    assert status == 200, body
    assert json.loads(body)["events"]
    assert spread.api("/api/events", query) == (status, body)


@pytest.mark.parametrize(
    "query",
    [
        "",
        "page_size=7",
        "distinct_id=user-03",
        f"distinct_ids={json.dumps(USERS[5:9])}",
        "data_group_id=company",
    ],
)
def test_profiles_are_equal(deployments: tuple[Deployment, Deployment], query: str) -> None:
    answers = [d.api("/api/2.0/engage", query) for d in deployments]
    assert answers[0][0] == 200, answers[0]
    assert json.loads(answers[0][1])["results"]
    assert answers[1] == answers[0]


def test_every_profile_page_by_page(deployments: tuple[Deployment, Deployment]) -> None:
    pages = []
    for deployment in deployments:

        async def every(reads: ReportReads, d: Deployment = deployment) -> list[list[bytes]]:
            return [page.results async for page in engage.every_profile(reads, d.token, PARTITIONS, None)]

        pages.append(deployment.run(deployment.reads(every)))
    assert pages[0] == pages[1]
    assert sorted(json.loads(r)["$distinct_id"] for page in pages[0] for r in page) == USERS


@pytest.mark.parametrize("path", ["/api/export", "/api/2.0/export"])
def test_exports_are_equal(deployments: tuple[Deployment, Deployment], path: str) -> None:
    single, spread = deployments
    query = f"from_date={D0}&to_date={D1}" if "2.0" in path else f"from={D0}&to={D1}"
    status, body = single.api(path, query)
    assert status == 200
    assert len(body.splitlines()) == sum(len(r) for r in event_requests(single.token))
    assert spread.api(path, query) == (status, body)


def test_the_export_command_is_equal(deployments: tuple[Deployment, Deployment]) -> None:
    outputs = []
    for deployment in deployments:
        done = trackgate(
            "export",
            "--project",
            deployment.token,
            "--from",
            str(D0),
            "--to",
            str(D1),
            "--redis-url",
            deployment.url,
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]
    assert len(outputs[0].splitlines()) == sum(len(r) for r in event_requests(deployments[0].token))


def test_the_profiles_export_command_is_equal(deployments: tuple[Deployment, Deployment]) -> None:
    outputs = []
    for deployment in deployments:
        done = trackgate("profiles", "export", "--project", deployment.token, "--redis-url", deployment.url)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]
    assert len(outputs[0].splitlines()) == len(USERS)


def test_the_funnel_report_command_is_equal(deployments: tuple[Deployment, Deployment]) -> None:
    outputs = []
    for deployment in deployments:
        done = trackgate(
            "funnels", "report", "signup", "--project", deployment.token, "--from", str(D0), "--to", str(D1),
            "--redis-url", deployment.url,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]
    assert "goal 1" in outputs[0]


def test_consume_reads_every_partition_of_the_cluster(deployments: tuple[Deployment, Deployment]) -> None:
    """`trackgate consume` hands on every entry of every partition (events and profile updates), as on
    one Redis; stopped with SIGTERM, it leaves nothing pending."""
    consumed = []
    group = f"g{uuid.uuid4().hex[:6]}"
    for deployment in deployments:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("TRACKGATE_")}
        command = [
            TRACKGATE,
            "consume",
            "--group",
            group,
            "--project",
            deployment.token,
            "--redis-url",
            deployment.url,
        ]
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ
        ) as process:
            expected = len(deployment_entries(deployment))
            assert process.stdout is not None
            lines = [process.stdout.readline() for _ in range(expected)]
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert f"{expected} entries handed on" in err.decode()
        entries = sorted(
            (e["kind"], e["partition"], json.dumps(e["data"], sort_keys=True)) for e in map(json.loads, lines)
        )
        consumed.append(entries)
        assert len({(kind, p) for kind, p, _ in entries}) == 2 * PARTITIONS
    assert consumed[0] == consumed[1]


def deployment_entries(deployment: Deployment) -> list[bytes]:
    """Every entry of every stream of the project (events, profile updates)."""
    found = []
    for p, client in deployment.nodes.items():
        for key in (keys.stream_key(deployment.token, p), keys.profile_updates_key(deployment.token, p)):
            found += [fields[b"data"] for _, fields in stream_entries(client, key)]
    return found


def trackgate(*args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TRACKGATE_")}
    environ["TRACKGATE_MAX_AGE"] = str(MAX_AGE)
    return subprocess.run([TRACKGATE, *args], capture_output=True, text=True, timeout=60, env=environ)


def test_a_moved_slot_is_followed(redis_cluster: Cluster, deployments: tuple[Deployment, Deployment]) -> None:
    """A partition's slot moved to another primary after the reads learned the slot map: its commands are
    answered MOVED, the map is read again, and they go to the new owner; while the slot is migrating,
    the keys already moved are reached with ASKING. (The slot is moved back after.)"""
    _, spread = deployments
    events, updates = keys.stream_key(spread.token, 0), keys.profile_updates_key(spread.token, 0)
    move = SlotMove(redis_cluster, events)
    # A key the target serves all along: read beside the key it is ASKed for, on one connection.
    beside = next(f"probe:{i}" for i in itertools.count() if redis_cluster.owner(f"probe:{i}") == move.target)
    with redis_cluster.client() as client:
        client.set(beside, "here")
    commands: list[Command] = [("XLEN", events), ("XLEN", updates), ("GET", beside)]

    async def scenario(reads: ReportReads) -> list[list[Any]]:
        before = await reads(commands)
        move.begin()
        try:
            move.migrate(events)
            during = await reads(commands)  # the events' stream is on the target (ASK), the updates' not
            move.complete()
            after = await reads(commands)  # MOVED for both
        finally:
            move.complete()
            move.back()
        again = await reads(commands)
        return [before, during, after, again]

    answers = spread.run(spread.reads(scenario))
    assert all(answers[0])
    assert answers[1:] == [answers[0]] * 3


class SlotMove:
    """One slot moved from its primary to another, by hand as `redis-cli --cluster reshard` does it
    (SETSLOT IMPORTING and MIGRATING, MIGRATE, SETSLOT NODE), and moved back."""

    def __init__(self, cluster: Cluster, key: str) -> None:
        self.cluster = cluster
        self.source = cluster.owner(key)
        self.target = next(n for n in cluster.primaries() if n.port != self.source.port)
        with self.source.client() as client:
            self.slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
        self.completed = False

    @staticmethod
    def _id(node: Node) -> str:
        with node.client() as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())

    def begin(self, source: Node | None = None, target: Node | None = None) -> None:
        source, target = source or self.source, target or self.target
        with target.client() as client:
            client.execute_command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", self._id(source))
        with source.client() as client:
            client.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", self._id(target))

    def migrate(self, *names: str, source: Node | None = None, target: Node | None = None) -> None:
        source, target = source or self.source, target or self.target
        with source.client() as client:
            client.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *names)

    def _move_rest(self, source: Node, target: Node) -> None:
        with source.client() as client:
            names = [k.decode() for k in client.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, 1000)]
        if names:
            self.migrate(*names, source=source, target=target)
        owner = self._id(target)
        for node in self.cluster.primaries():
            with node.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", owner)

    def complete(self) -> None:
        if not self.completed:
            self._move_rest(self.source, self.target)
            self.completed = True

    def back(self) -> None:
        self.begin(self.target, self.source)
        self._move_rest(self.target, self.source)
        wait_for(self._agreed, 10, "every node naming the slot's owner")

    def _agreed(self) -> bool:
        return all(self._owner_seen_by(node) == self.source.port for node in self.cluster.nodes)

    def _owner_seen_by(self, node: Node) -> int:
        with node.client() as client:
            for first, last, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if first <= self.slot <= last:
                    return int(primary[1])
        return 0


def test_a_command_s_key_is_read_from_its_packed_form() -> None:
    assert key_of(pack("HMGET", "tg:{t:1}:ed:2026-01-01", "a", "b")) == b"tg:{t:1}:ed:2026-01-01"
    assert key_of(pack("ZRANGE", "k" * 300, "0", "-1")) == b"k" * 300


def test_exports_read_every_partition(deployments: tuple[Deployment, Deployment]) -> None:
    _, spread = deployments

    async def lines(reads: ReportReads) -> list[bytes]:
        found = export.export_events(
            reads, spread.token, PARTITIONS, D0, D1, max_future_skew=3600, max_age=MAX_AGE
        )
        return [line async for line in found]

    exported = spread.run(spread.reads(lines))
    assert sorted(exported) == sorted(
        data + b"\n" for data in deployment_entries(spread) if b'"event"' in data
    )


def test_reindex_finds_every_partition_s_days(deployments: tuple[Deployment, Deployment]) -> None:
    """`trackgate project reindex` scans every primary for the hourly counts: the same days and names as
    on one Redis (and the counts read after it are still equal)."""
    outputs = []
    for deployment in deployments:
        done = trackgate("project", "reindex", deployment.token, "--redis-url", deployment.url)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]
    assert " 0 days" not in outputs[0]
    query = f"from={D0}&to={D1}"
    assert deployments[0].api("/api/events", query) == deployments[1].api("/api/events", query)


@pytest.fixture(scope="module")
def gateways(
    redis_server: RedisServer, redis_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[tuple[Gateway, str], tuple[Gateway, str]]]:
    """`trackgate serve` on the suite's Redis and on the cluster, each with the same project (token),
    given the same requests through /track and /engage; with each's API secret."""
    token, name = f"gw{uuid.uuid4().hex[:14]}", f"cluster http {uuid.uuid4().hex[:6]}"
    started = []
    try:
        for url in (redis_server.url, redis_cluster.url):
            gateway = Gateway(tmp_path_factory.mktemp("gateway"), "--max-age", str(MAX_AGE), redis_url=url)
            gateway.start()
            started.append((gateway, create_project_keys(url, name, token)[1]))
        for gateway, _ in started:
            with requests.Session() as http:
                for events in event_requests(token):
                    r = http.post(gateway.url("/track"), data={"data": json.dumps(events), "verbose": "1"})
                    assert r.json() == {"status": 1, "error": None}, r.text
                for groups, updates in profile_requests(token):
                    path = "/groups" if groups else "/engage"
                    r = http.post(gateway.url(path), data={"data": json.dumps(updates), "verbose": "1"})
                    assert r.json() == {"status": 1, "error": None}, r.text
        yield started[0], started[1]
    finally:
        for gateway, _ in started:
            gateway.stop()


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/api/funnels", ""),
        ("/api/funnels/signup", f"from={D0}&to={D1}"),
        ("/api/events", f"from={D0}&to={D1}&unit=hour"),
        ("/api/2.0/engage", "page_size=9"),
        ("/api/2.0/export", f"from_date={D0}&to_date={D1}"),
    ],
)
def test_the_reports_process_on_a_cluster_answers_as_on_one_redis(
    gateways: tuple[tuple[Gateway, str], tuple[Gateway, str]], path: str, query: str
) -> None:
    """Over HTTP, the gateways' own writes: the same answers, but for the times each gateway received
    what it stored (a profile's `$last_seen`, an exported event's `mp_processing_time_ms`)."""
    answers = []
    for gateway, secret in gateways:
        r = requests.get(gateway.reports_url(f"{path}?{query}"), auth=(secret, ""), timeout=30)
        assert r.status_code == 200, r.text
        answers.append(r.content)
    if "engage" in path:
        assert without_last_seen(answers[1]) == without_last_seen(answers[0])
    elif "export" in path:
        assert without_receive_times(answers[1]) == without_receive_times(answers[0])
    else:
        assert answers[1] == answers[0]
    assert len(answers[0]) > 20


def without_last_seen(body: bytes) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(body)
    for result in answer["results"]:
        result["$properties"].pop("$last_seen", None)
    return answer


def without_receive_times(body: bytes) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in body.splitlines()]
    for line in lines:
        assert line["properties"].pop("mp_processing_time_ms") > 0
    return lines
