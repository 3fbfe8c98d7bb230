"""A report's query parameters as the query API reads them: the last value of each, and whole numbers
within bounds. What cannot be used raises ParameterError, whose message names the parameter; the API
answers it 400."""

from __future__ import annotations

from collections.abc import Mapping

Query = Mapping[str, list[str]]
"""Parameters as `urllib.parse.parse_qs` gives them: each name with its values, in order."""


class ParameterError(ValueError):
    """A parameter that cannot be used; the message begins with its name."""


def last(query: Query, name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def whole(query: Query, name: str, default: int, most: int, least: int = 0) -> int:
    """A whole number from `least` to `most`, or `default` when the parameter is absent."""
    text = last(query, name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 10) or not least <= int(text) <= most:
        raise ParameterError(f"{name}: expected a whole number from {least} to {most}, got {text[:40]!r}")
    return int(text)
