"""The native decoder against the same checks in Python, in one process and one run.

The gateway's decoder: three decoders take the same request, a mixpanel-browser-like POST (`data=<base64>`
in a form body, `ip=1` in the query string), holding one ~300-byte event or a batch of 50:

- native: `trackgate.decode_request` (Rust);
- stdlib: tests/reference_decoder.py, the test oracle, on base64 + json;
- pybase64+orjson: the same oracle on the fastest Python libraries for the two expensive steps.

All three do the whole job: form decoding, base64, JSON, every per-event rule, the normalised JSON of each
event, and its partition.

The library: `trackgate.decode` on the `data` value of the same request (its base64), giving typed Events,
against the oracle doing the same checks on the standard library, and against pybase64 + orjson parsing
the same data with no checks at all.

The script first checks that the contestants give the same events, then prints events per second (best
of several repetitions, garbage collection off while timing) and the ratios.

    .venv/bin/python bench/decode_bench.py
    .venv/bin/python bench/decode_bench.py --quick    # shorter loops, fewer repetitions
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import platform
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import msgspec
import orjson
import pybase64
import reference_decoder as ref
import trackgate

NOW = 1795667298.3074808
TOKEN = "e3bc4100330c35722740fb8c6f5abddc"
QUERY = "ip=1&_=1795667298218"
FORM = "application/x-www-form-urlencoded"
PEER_IP = "127.0.0.1"


def browser_event(i: int) -> dict[str, Any]:
    """What mixpanel-browser 2.82.1 sends for a page view: about 300 bytes of JSON."""
    return {
        "event": "Page View",
        "properties": {
            "$os": "Linux",
            "$browser": "Chrome",
            "$current_url": "https://example.com/pricing",
            "mp_lib": "web",
            "$lib_version": "2.82.1",
            "$insert_id": f"jua3dj1dvdsg{i:04d}",
            "time": NOW - 1.5 - i / 1000,
            "distinct_id": f"$device:72cfadd4-f96d-4a2d-{i:012d}",
            "token": TOKEN,
        },
    }


def loop_settings(quick: bool) -> tuple[float, int]:
    """(seconds per timed loop, repetitions)."""
    return (0.1, 3) if quick else (0.5, 5)


def event_shapes() -> dict[str, Any]:
    """The events measured, by name: one event, and a batch of 50."""
    return {"single": browser_event(0), "batch of 50": [browser_event(i) for i in range(50)]}


def request_shapes() -> dict[str, bytes]:
    """The requests measured, by name: the events of `event_shapes` as mixpanel-browser posts them."""
    return {shape: form_body(events) for shape, events in event_shapes().items()}


def data_shapes() -> dict[str, bytes]:
    """The `data` values measured, by name: the events of `event_shapes` as base64."""
    return {
        shape: base64.b64encode(json.dumps(events, separators=(",", ":")).encode())
        for shape, events in event_shapes().items()
    }


def decoders() -> dict[str, Callable[[bytes], int]]:
    """The contestants, by name."""
    return {
        "native": native_decoder(),
        "stdlib": oracle_decoder(ref.STDLIB),
        "pybase64+orjson": oracle_decoder(ref.fast_backend()),
    }


def check_same_events(shapes: dict[str, bytes], names: Iterable[str]) -> None:
    """Raise RuntimeError unless every decoder stores the same events as native for every shape."""
    for shape, body in shapes.items():
        reference = stored_events("native", body)
        for name in names:
            if stored_events(name, body) != reference:
                raise RuntimeError(f"{name} does not store the same events as native for the {shape} request")


def form_body(events: Any) -> bytes:
    """`data=<base64 of the compact JSON>`, percent-encoded, as mixpanel-browser posts it."""
    text = json.dumps(events, separators=(",", ":")).encode()
    return ("data=" + urllib.parse.quote(base64.b64encode(text).decode(), safe="")).encode()


def native_decoder() -> Callable[[bytes], int]:
    options = trackgate.Options()

    def decode(body: bytes) -> int:
        request = trackgate.decode_request(QUERY, body, FORM, now=NOW, options=options, peer_ip=PEER_IP)
        return int(request.accepted)

    return decode


def oracle_decoder(backend: ref.Backend) -> Callable[[bytes], int]:
    options = ref.Options()

    def decode(body: bytes) -> int:
        result = ref.decode_request(
            QUERY, body, FORM, now=NOW, options=options, peer_ip=PEER_IP, backend=backend
        )
        return result.accepted

    return decode


def stored_events(name: str, body: bytes) -> list[Any]:
    """The normalised events a decoder stores, parsed, to check that the contestants do the same job."""
    if name == "native":
        request = trackgate.decode_request(
            QUERY, body, FORM, now=NOW, options=trackgate.Options(), peer_ip=PEER_IP
        )
        return [json.loads(raw) for raw in request.events()]
    backend = ref.STDLIB if name == "stdlib" else ref.fast_backend()
    result = ref.decode_request(QUERY, body, FORM, now=NOW, peer_ip=PEER_IP, backend=backend)
    return [json.loads(event.json) for event in result.events]


def library_decoders() -> dict[str, Callable[[bytes], int]]:
    """`trackgate.decode` on a `data` value, the oracle's checks on the standard library, parsing alone."""
    options, ref_options = trackgate.Options(), ref.Options()

    def native(data: bytes) -> int:
        return len(trackgate.decode(data, now=NOW, options=options))

    def stdlib(data: bytes) -> int:
        return ref.decode_data(data, now=NOW, options=ref_options).accepted

    def parsing_alone(data: bytes) -> int:
        parsed = orjson.loads(pybase64.b64decode(data))
        return len(parsed) if isinstance(parsed, list) else 1

    return {"trackgate.decode": native, "stdlib": stdlib, "pybase64+orjson, no checks": parsing_alone}


def same_typed_events(data: bytes) -> bool:
    """`trackgate.decode` gives the events the oracle stores, read into Events (the types compared too)."""
    stored = ref.decode_data(data, now=NOW).events
    expected = [msgspec.json.decode(event.json, type=trackgate.Event) for event in stored]
    return msgspec.json.encode(trackgate.decode(data, now=NOW)) == msgspec.json.encode(expected)


def events_per_second(decode: Callable[[bytes], int], body: bytes, seconds: float, repeats: int) -> float:
    """Best of `repeats` timed loops, each about `seconds` long."""
    per_call = decode(body)
    calls = 1
    while True:  # calibrate: double the loop until it takes a measurable time
        elapsed = _timed(decode, body, calls)
        if elapsed > seconds / 10:
            break
        calls *= 2
    calls = max(1, round(calls * seconds / elapsed))
    best = min(_timed(decode, body, calls) for _ in range(repeats))
    return calls * per_call / best


def _timed(decode: Callable[[bytes], int], body: bytes, calls: int) -> float:
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(calls):
            decode(body)
        return time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def measure(
    title: str,
    shapes: dict[str, bytes],
    decoders: dict[str, Callable[[bytes], int]],
    seconds: float,
    repeats: int,
) -> dict[tuple[str, str], float]:
    print(f"{title}\n{'':12} {'decoder':>28} {'events/s':>12}")
    rates: dict[tuple[str, str], float] = {}
    for shape, body in shapes.items():
        for name, decode in decoders.items():
            rates[(shape, name)] = events_per_second(decode, body, seconds, repeats)
            print(f"{shape:12} {name:>28} {rates[(shape, name)]:>12,.0f}")
    print()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter loops and fewer repetitions")
    args = parser.parse_args()
    seconds, repeats = loop_settings(args.quick)
    shapes, datas, contestants = request_shapes(), data_shapes(), decoders()

    event_bytes = len(json.dumps(browser_event(0), separators=(",", ":")))
    print(
        f"decoder benchmark: Python {platform.python_version()}, trackgate {trackgate.__version__}, "
        f"{platform.machine()}"
    )
    print(f"one event: {event_bytes} bytes of JSON; request: form body `data=<base64>`, query {QUERY!r}")
    try:
        check_same_events(shapes, contestants)
    except RuntimeError as err:
        sys.exit(str(err))
    for shape, data in datas.items():
        if not same_typed_events(data):
            sys.exit(f"trackgate.decode does not give the stored events for the {shape} data")
    print("all decoders store the same events; trackgate.decode gives them as Events\n")

    rates = measure("the gateway's decoder: decode_request", shapes, contestants, seconds, repeats)
    for shape in shapes:
        native = rates[(shape, "native")]
        print(
            f"{shape:12} native/stdlib = {native / rates[(shape, 'stdlib')]:5.1f}x   "
            f"native/pybase64+orjson = {native / rates[(shape, 'pybase64+orjson')]:5.1f}x"
        )
    print()
    library = library_decoders()
    rates = measure("the library: trackgate.decode on the data value", datas, library, seconds, repeats)
    for shape in datas:
        native = rates[(shape, "trackgate.decode")]
        parsing = rates[(shape, "pybase64+orjson, no checks")]
        print(
            f"{shape:12} trackgate.decode/stdlib = {native / rates[(shape, 'stdlib')]:5.1f}x   "
            f"trackgate.decode/pybase64+orjson = {native / parsing:5.2f}x"
        )


if __name__ == "__main__":
    main()
