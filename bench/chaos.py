"""The chaos suite: the gateway under faults and floods, each scenario checking that every event answered
`1` is stored exactly once, that no event is stored twice, and that the counters count what the streams
hold.

    .venv/bin/python bench/chaos.py                        # every scenario, a few minutes (`make chaos`)
    .venv/bin/python bench/chaos.py --quick                # shorter faults, smaller floods
    .venv/bin/python bench/chaos.py --only oom redis-stop  # some of them

Each scenario starts its own redis-server and gateway(s) (`trackgate serve`, Granian) on 127.0.0.1 and
stops them before the next one. bench/README.md ("The chaos suite") says what each does and checks.
Writes bench/results/<date>-chaos.json and .md (`-chaos-quick` with --quick), prints the table, and
exits 1 when a scenario failed a check, naming the scenario and the check.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import chaos_faults
import chaos_floods
from chaos_scenario import Context, Outcome, Scenario
from measure import require_tools
from processes import run_main, servers_stopped_on_exit
from provenance import RESULTS, machine_info, versions

SCENARIOS: tuple[Scenario, ...] = chaos_floods.SCENARIOS + chaos_faults.SCENARIOS
COLUMNS = (
    "scenario", "answers 1 / 503 / other", "lost", "doubled", "counted / stored", "recovery",
    "worker RSS", "Redis RSS", "/track events/s before / during / after", "result",
)  # fmt: skip


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(scenario: Scenario, quick: bool) -> Outcome:
    """The scenario in a directory of its own, every server it started stopped afterwards; an exception
    is a failure of the scenario, not of the suite. The directory (the servers' logs, Redis's data) is
    kept when the scenario failed, and named."""
    work = Path(tempfile.mkdtemp(prefix=f"trackgate-chaos-{scenario.name}-"))
    ctx = Context(scenario.name, work, quick)
    try:
        scenario.run(ctx)
    except Exception as err:
        traceback.print_exc()
        ctx.failures.append(f"stopped: {type(err).__name__}: {err}")
    finally:
        ctx.close()
    outcome = ctx.outcome()
    if outcome.failures:
        log(f"{scenario.name}: its servers' logs are kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return outcome


def _number(value: float | None, unit: str = "", digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def row(outcome: Outcome) -> list[str]:
    answers = outcome.answers
    other = sum(n for kind, n in answers.items() if kind not in ("1", "503"))
    counters = (
        "-" if outcome.stream_events is None else f"{outcome.counted_events:,} / {outcome.stream_events:,}"
    )
    rates = " / ".join(_number(outcome.rates.get(p)) for p in ("before", "during", "after"))
    return [
        outcome.name,
        f"{answers.get('1', 0):,} / {answers.get('503', 0):,} / {other:,}",
        _number(outcome.lost),
        _number(outcome.doubled),
        counters,
        _number(outcome.recovery_s, " s", 2),
        _number(outcome.worker_rss_peak_mib, " MiB"),
        _number(outcome.redis_rss_peak_mib, " MiB"),
        rates if outcome.rates else "-",
        "FAILED" if outcome.failures else "ok",
    ]


def table(outcomes: list[Outcome]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(o)) + " |" for o in outcomes]
    return "\n".join(lines)


def markdown(document: dict[str, Any], outcomes: list[Outcome]) -> str:
    suite, machine, software = document["suite"], document["machine"], document["versions"]
    described = {s.name: s for s in SCENARIOS}
    parts = [
        f"# Chaos suite, {suite['started'][:10]} ({suite['mode']})",
        "",
        f"`{suite['command']}`, {suite['elapsed_s']:.0f} s. trackgate {software['trackgate_commit']}, "
        f"Python {software['python']}, Granian {software['granian']}, "
        f"redis-server {software['redis_server']}; "
        f"{machine['cpus']} CPUs ({machine['cpu_model']}), load average {machine['load_average_at_start']} "
        "at the start.",
        "",
        "Answers count requests (`other`: any other status, or no answer); lost, doubled, counted and "
        "stored count events. Recovery is from the fault's end to the first answer `1` after it; RSS "
        "figures are peaks (VmHWM); rates are events answered `1` per second.",
        "",
        table(outcomes),
    ]
    for outcome in outcomes:
        scenario = described[outcome.name]
        parts += [
            "",
            f"## {outcome.name}",
            "",
            f"Does: {scenario.does}.",
            "",
            f"Checks: {scenario.checks}.",
            "",
        ]
        parts += [f"- answers: {outcome.answers}", f"- seconds: {outcome.seconds}"]
        if outcome.stored_unacknowledged is not None:
            parts.append(
                f"- events stored though not answered 1 (at least once, around a 503): "
                f"{outcome.stored_unacknowledged:,}"
            )
        parts += [f"- {name}: {value}" for name, value in outcome.figures.items()]
        parts += [f"- **FAILED**: {failure}" for failure in outcome.failures]
    return "\n".join(parts) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter faults and smaller floods")
    parser.add_argument(
        "--only", nargs="+", choices=[s.name for s in SCENARIOS], help="these scenarios alone"
    )
    parser.add_argument("--out", type=Path, help="the JSON file to write (the .md goes beside it)")
    args = parser.parse_args()
    require_tools()
    mode = "quick" if args.quick else "full"
    out: Path = args.out or RESULTS / f"{datetime.date.today().isoformat()}-chaos{'-quick' * args.quick}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    document: dict[str, Any] = {
        "suite": {
            "mode": mode,
            "command": shlex.join([Path(sys.executable).name, *sys.argv]),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        },
        "machine": machine_info(),
        "versions": versions(),
    }
    outcomes: list[Outcome] = []
    with servers_stopped_on_exit():
        for scenario in SCENARIOS:
            if args.only and scenario.name not in args.only:
                continue
            log(f"{scenario.name}: {scenario.does}")
            outcomes.append(run(scenario, args.quick))
            log(f"{scenario.name}: {'FAILED' if outcomes[-1].failures else 'ok'} in {outcomes[-1].seconds} s")
    document["suite"]["elapsed_s"] = round(time.monotonic() - started, 1)
    document["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    document["scenarios"] = [outcome.as_dict() for outcome in outcomes]
    out.write_text(json.dumps(document, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(document, outcomes))
    log(f"wrote {out} and {out.with_suffix('.md').name}")
    print(table(outcomes))
    failed = [(o.name, failure) for o in outcomes for failure in o.failures]
    for name, failure in failed:
        print(f"FAILED {name}: {failure}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
