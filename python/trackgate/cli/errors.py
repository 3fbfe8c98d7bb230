"""What the commands refuse with."""

from __future__ import annotations


class UsageError(ValueError):
    """A command's arguments name something that is not there."""
