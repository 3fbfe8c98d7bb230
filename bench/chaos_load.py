"""The chaos suite's clients: they send events that each carry a number of their own, and record every
answer, so that the suite can tell which events were acknowledged and look for each of them in Redis.

An event's `run` (one per client pool) and `seq` (unique within the run) name it; a request is
acknowledged when it is answered 200 `1`, and then each of its events must be stored exactly once. The
clients never send an event twice: a request refused or left unanswered is not retried, so an event in
Redis twice is the gateway's doing.
"""

from __future__ import annotations

import http.client
import itertools
import json
import select
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

NO_ANSWER = 0
"""The status recorded for a request that got no answer: a connection refused, reset or timed out."""
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@dataclass(frozen=True)
class Answer:
    """One request: its events `first` .. `first + count - 1`, when it left and when its answer came
    (time.monotonic), and the answer."""

    first: int
    count: int
    status: int
    body: bytes
    retry_after: str | None
    sent: float
    answered: float

    @property
    def acknowledged(self) -> bool:
        return self.status == 200 and self.body == b"1"


class Answers:
    """Every answer of one run, from any number of threads."""

    def __init__(self) -> None:
        self.run = uuid.uuid4().hex
        self._answers: list[Answer] = []
        self._lock = threading.Lock()

    def record(self, answer: Answer) -> None:
        with self._lock:
            self._answers.append(answer)

    def all(self) -> list[Answer]:
        with self._lock:
            return list(self._answers)

    def acknowledged(self, sent_after: float = 0.0) -> set[int]:
        """The events of the requests answered `1` (of those sent at `sent_after` or later)."""
        return {
            answer.first + i
            for answer in self.all()
            if answer.acknowledged and answer.sent >= sent_after
            for i in range(answer.count)
        }

    def acknowledged_between(self, start: float, end: float) -> int:
        """Events answered `1` by answers that came from `start` to `end`."""
        return sum(a.count for a in self.all() if a.acknowledged and start <= a.answered < end)

    def kinds(self) -> Counter[str]:
        """Requests by answer: `1`, another status, or `no answer`."""
        return Counter(kind(answer) for answer in self.all())

    def count(self, status: int, since: float = 0.0) -> int:
        """Requests answered with `status` at `since` or later."""
        return sum(1 for answer in self.all() if answer.status == status and answer.answered >= since)

    def first_acknowledged(self, since: float) -> float | None:
        """When the first answer `1` came at `since` or later."""
        times = [answer.answered for answer in self.all() if answer.acknowledged and answer.answered >= since]
        return min(times, default=None)


def kind(answer: Answer) -> str:
    if answer.acknowledged:
        return "1"
    return "no answer" if answer.status == NO_ANSWER else str(answer.status)


def acknowledged_rate(answers: Iterable[Answers], start: float, end: float) -> float:
    """Events answered `1` per second, of the answers that came from `start` to `end`."""
    if end <= start:
        return 0.0
    return sum(run.acknowledged_between(start, end) for run in answers) / (end - start)


def event(run: str, seq: int, token: str, name: str) -> dict[str, object]:
    """A small event; its distinct_id spreads a run's events over every partition."""
    return {
        "event": name,
        "properties": {"token": token, "distinct_id": f"u{seq % 1000}", "run": run, "seq": seq},
    }


def dropped(connection: http.client.HTTPConnection) -> bool:
    """The server closed this idle keep-alive connection (a gateway that refused a request before
    reading its body closes it after the answer): readable with nothing to read. HTTP clients look
    before they reuse a connection (urllib3 does), rather than send a request into a closed one."""
    sock = connection.sock
    return sock is not None and bool(select.select([sock], [], [], 0)[0])


class Load:
    """`clients` threads, each on a keep-alive connection, posting `batch` events per request as fast as
    the answers come, until stopped or, with `limit`, until that many events are sent. `name` gives an
    event's name from its seq. After a request that is not answered `1`, a client pauses `pause`
    seconds, as clients wait before their next try, rather than spin on refusals. Without `keep_alive`,
    each request comes on a new connection, as a browser's often does."""

    def __init__(
        self,
        base: str,
        token: str,
        *,
        clients: int = 4,
        batch: int = 10,
        name: Callable[[int], str] = lambda _seq: "chaos",
        limit: int | None = None,
        pause: float = 0.1,
        keep_alive: bool = True,
    ) -> None:
        self.answers = Answers()
        self._token = token
        self._batch = batch
        self._name = name
        self._limit = limit
        self._pause = pause
        self._headers = FORM if keep_alive else {**FORM, "Connection": "close"}
        self._address = self._parse(base)
        self._blocks = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _parse(base: str) -> tuple[str, int]:
        url = urllib.parse.urlsplit(base)
        if url.hostname is None or url.port is None:
            raise ValueError(f"not a base URL with a port: {base}")
        return url.hostname, url.port

    def retarget(self, base: str) -> None:
        """Send the next requests to another gateway (one started in place of a dead one): a client moves
        over once its connection fails."""
        self._address = self._parse(base)

    def _next_block(self) -> int | None:
        with self._lock:
            first = next(self._blocks) * self._batch
        return None if self._limit is not None and first >= self._limit else first

    def _client(self) -> None:
        connection: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            first = self._next_block()
            if first is None:
                break
            count = self._batch if self._limit is None else min(self._batch, self._limit - first)
            run = self.answers.run
            events = [event(run, seq, self._token, self._name(seq)) for seq in range(first, first + count)]
            body = urllib.parse.urlencode({"data": json.dumps(events)})
            sent = time.monotonic()
            try:
                if connection is not None and dropped(connection):
                    connection.close()
                    connection = None
                if connection is None:
                    connection = http.client.HTTPConnection(*self._address, timeout=60)
                connection.request("POST", "/track", body, self._headers)
                response = connection.getresponse()
                answer = Answer(
                    first, count, response.status, response.read(), response.getheader("retry-after"),
                    sent, time.monotonic(),
                )  # fmt: skip
            except (OSError, http.client.HTTPException) as err:
                if connection is not None:
                    connection.close()
                connection = None
                answer = Answer(first, count, NO_ANSWER, repr(err).encode(), None, sent, time.monotonic())
            self.answers.record(answer)
            if not answer.acknowledged:
                time.sleep(self._pause)
        if connection is not None:
            connection.close()

    def finished(self) -> bool:
        """Every client has stopped (all `limit` events sent)."""
        return not any(thread.is_alive() for thread in self._threads)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)
