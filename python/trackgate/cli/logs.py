"""How every trackgate process logs: Granian's layout plus trackgate's own logger."""

from __future__ import annotations

from typing import Any


def logging_config(level: str) -> dict[str, Any]:
    """Granian's logging layout (it replaces the whole `loggers` table) plus trackgate's logger, with
    times, since a gateway's log is read after the fact."""
    console = {"formatter": "generic", "class": "logging.StreamHandler", "stream": "ext://sys.stdout"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "generic": {"()": "logging.Formatter", "fmt": "%(asctime)s [%(levelname)s] %(message)s"},
            "access": {"()": "logging.Formatter", "fmt": "%(message)s"},
        },
        "handlers": {
            "console": console,
            "access": {"formatter": "access", "class": "logging.StreamHandler", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "_granian": {"handlers": ["console"], "level": "INFO", "propagate": False},
            "granian.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
            "trackgate": {"handlers": ["console"], "level": level.upper(), "propagate": False},
        },
    }
