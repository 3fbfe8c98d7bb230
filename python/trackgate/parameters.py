"""A report's query parameters as the query API reads them: the last value of each, whole numbers within
bounds, days, and JSON lists of names. What cannot be used raises ParameterError, whose message names the
parameter; the API answers it 400."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping

import msgspec

Query = Mapping[str, list[str]]
"""Parameters as `urllib.parse.parse_qs` gives them: each name with its values, in order."""


class ParameterError(ValueError):
    """A parameter that cannot be used; the message begins with its name."""


def last(query: Query, name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def refuse(query: Query, names: Iterable[str], instead: str) -> None:
    """Refuses the first of `names` the query holds: Mixpanel's filters that trackgate does not evaluate,
    refused rather than ignored, since ignoring one would answer with what it excludes. `instead` says
    what to do."""
    for name in names:
        if name in query:
            raise ParameterError(f"{name}: not supported; {instead}")


def whole(query: Query, name: str, default: int, most: int, least: int = 0) -> int:
    """A whole number from `least` to `most`, or `default` when the parameter is absent."""
    text = last(query, name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 10) or not least <= int(text) <= most:
        raise ParameterError(f"{name}: expected a whole number from {least} to {most}, got {text[:40]!r}")
    return int(text)


def day(query: Query, name: str) -> dt.date | None:
    """A day as YYYY-MM-DD, or None when the parameter is absent."""
    text = last(query, name)
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ParameterError(f"{name}: expected a date as YYYY-MM-DD, got {text[:40]!r}") from None


def json_names(text: str, name: str, most: int) -> list[str]:
    """A JSON list of strings (numbers taken as their text), each once, at most `most` of them."""
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        raise ParameterError(f"{name}: expected a JSON list, got {text[:40]!r}") from None
    if not isinstance(value, list) or not all(
        isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)) for v in value
    ):
        raise ParameterError(f"{name}: expected a JSON list of strings")
    found = list(dict.fromkeys(str(v) for v in value))
    if len(found) > most:
        raise ParameterError(f"{name}: at most {most}, got {len(found)}")
    return found
