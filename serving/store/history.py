"""Reading an alias's past from history.jsonl: where a rollback goes back to."""

from __future__ import annotations

from typing import Any


def previous_version(history: list[dict[str, Any]], alias: str, current: int) -> int | None:
    """The version `alias` had before the promote that made it `current`."""
    for event in reversed(history):
        if (
            event.get("action") in ("promote", "route")
            and event.get("alias") == alias
            and event.get("version") == current
            and event.get("previous") not in (None, current)
        ):
            return int(event["previous"])
    return None


def version_before_split(history: list[dict[str, Any]], alias: str) -> int | None:
    """The version `alias` served before the run of `route` events that split it."""
    before = None
    for event in reversed(history):
        if event.get("alias") != alias or event.get("action") not in (
            "promote",
            "rollback",
            "route",
        ):
            continue
        if event["action"] != "route":
            break
        before = event.get("previous")
    return int(before) if before is not None else None


def earlier_versions(history: list[dict[str, Any]], alias: str, current: int) -> list[int]:
    """Versions `alias` pointed at, newest first, without `current` or repeats."""
    seen: list[int] = []
    for event in reversed(history):
        if event.get("alias") != alias or event.get("action") not in (
            "promote",
            "rollback",
            "route",
        ):
            continue
        for key in ("version", "previous"):
            version = event.get(key)
            if isinstance(version, int) and version != current and version not in seen:
                seen.append(version)
    return seen
