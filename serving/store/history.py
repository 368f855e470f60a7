"""Reading a model's past from history.jsonl: where a rollback goes back to, and the
deployment a worker falls back to when deployment.json is damaged."""

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


def replay_deployment(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The deployment history.jsonl describes, its changes replayed in order (None: none).

    What a worker that starts on a damaged deployment.json serves: every promote, rollback,
    route and shadow is recorded with the alias and version it left behind.
    """
    aliases: dict[str, int] = {}
    routes: dict[str, Any] = {}
    shadows: dict[str, int] = {}
    changed = False
    for event in history:
        action, alias, version = event.get("action"), event.get("alias"), event.get("version")
        if not isinstance(alias, str):
            continue
        if action in ("promote", "rollback", "route") and isinstance(version, int):
            aliases[alias] = version
            routes.pop(alias, None)
            if action == "route" and isinstance(event.get("route"), dict):
                routes[alias] = event["route"]
            changed = True
        elif action == "shadow":
            shadows.pop(alias, None)
            if isinstance(event.get("shadow"), int):
                shadows[alias] = event["shadow"]
            changed = True
    if not changed:
        return None
    return {"aliases": aliases, "routes": routes, "shadows": shadows}
