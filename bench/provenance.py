"""What a result file records of where it was measured: the machine, the versions of what ran, and the
default place and name of the file."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import trackgate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def default_result(suffix: str = "") -> Path:
    """bench/results/<date>-<host><suffix>.json"""
    stamp = datetime.date.today().isoformat() + "-" + socket.gethostname().split(".")[0]
    return RESULTS / f"{stamp}{suffix}.json"


def _first(pattern: str, text: str) -> str:
    found = re.search(pattern, text, re.MULTILINE)
    return found.group(1).strip() if found else "?"


def _command(args: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10, cwd=cwd, check=False)
    except OSError:
        return ""
    return (done.stdout + done.stderr).strip()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    meminfo = Path("/proc/meminfo").read_text()
    return {
        "host": socket.gethostname(),
        "cpu_model": _first(r"^model name\s*:\s*(.*)$", cpuinfo),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(int(_first(r"^MemTotal:\s*(\d+)", meminfo)) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _first(r'^PRETTY_NAME="?([^"\n]*)', Path("/etc/os-release").read_text())
        if Path("/etc/os-release").exists()
        else platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> dict[str, Any]:
    commit = _command(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT) or "?"
    dirty = _command(["git", "status", "--porcelain", "--", "python", "rust"], cwd=ROOT)
    native = next(iter((ROOT / "python" / "trackgate").glob("_native*.so")), None)
    if native is None:
        native = Path(trackgate._native.__file__)
    return {
        "python": platform.python_version(),
        "granian": _version("granian"),
        "redis_server": _first(r"v=(\S+)", _command(["redis-server", "--version"])),
        "wrk": _first(r"^wrk (\S+)", _command(["wrk", "-v"])),
        "trackgate": getattr(trackgate, "__version__", "?"),
        "trackgate_commit": commit + ("+uncommitted changes in python/ or rust/" if dirty else ""),
        "native_extension_built": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(native.stat().st_mtime)),
        "redis_py": _version("redis"),
        "hiredis": _version("hiredis"),
        "fastapi": _version("fastapi"),
        "uvicorn": _version("uvicorn"),
        "uvloop": _version("uvloop"),
        "httptools": _version("httptools"),
    }


def run_record(**fields: Any) -> dict[str, Any]:
    """The head of a side-by-side script's result: its command line, when it started, the machine and the
    versions, then `fields` (its settings)."""
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions(),
        **fields,
    }


def write_record(out: Path, results: dict[str, Any], markdown: Callable[[dict[str, Any]], str]) -> Path:
    """The load average at the end added, `results` written to `out` and its Markdown report beside it
    (printed too); returns the report's path."""
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out.write_text(json.dumps(results, indent=1) + "\n")
    md = out.with_suffix(".md")
    md.write_text(markdown(results))
    print(md.read_text())
    return md
