"""JSON bodies parsed strictly: a key given twice in one object is refused, never resolved.

orjson (and the standard library) keep the last of duplicated keys silently, so
`{"instances": <bad>, "instances": <good>}` would be accepted. orjson parses; a scan counts
the keys the text holds and compares them with the keys of the parsed objects: the colons when
no string holds one, else every string token followed by a colon. Only when they differ does a
slower pass name the duplicated key.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from serving.errors import MalformedRequest

# A JSON string token, and whether a colon follows it (then it is a key). Inside a string every
# quote is escaped, so scanning from the start meets strings exactly where they begin.
_ONLY_DICTS = {dict}
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"(\s*:)?', re.S)


def loads_lenient(body: bytes, what: str = "the request body") -> Any:
    """The standard library's parse, for what orjson refuses: NaN, Infinity, integers past 64
    bits (the schema then names the row they are in); MalformedRequest (400) otherwise."""
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise MalformedRequest(f"{what} is not valid UTF-8") from None
    except ValueError as exc:
        raise MalformedRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise MalformedRequest("malformed JSON: nested too deeply") from None


def check_no_duplicate_keys(body: bytes, payload: Any) -> None:
    """Raise MalformedRequest (400) when `body`'s objects repeat a key; `payload` is its parse."""
    colons = body.count(b":")
    # colons >= keys in the text >= keys parsed >= any undercount of them: a cheap undercount
    # equal to the colons proves there is no repeat (the common bodies end here).
    if type(payload) is dict and colons == _shallow_keys(payload):
        return
    if body.count(b"{") == 1 and type(payload) is dict:  # one object: the envelope
        parsed_keys = len(payload)
    else:
        parsed_keys = _count_keys(payload)
    # Each key is followed by one colon; any other colon is inside a string. As many colons as
    # parsed keys: no key can repeat (the common case, at the cost of one byte count).
    if colons == parsed_keys:
        return
    tokens = _STRING.findall(body)  # per string: the colon after it, or b"" (not a key)
    text_keys = len(tokens) - tokens.count(b"")
    if text_keys != parsed_keys:
        key = _first_duplicate(body)
        raise MalformedRequest(
            f"malformed JSON: the key {key!r} appears twice in one object", {"duplicate_key": key}
        )


def _shallow_keys(payload: dict[str, Any]) -> int:
    """The envelope's keys, plus those of its object values and of its lists of objects (the
    records of `instances`, V2's `inputs`, `dataframe_split`): never more than the parse holds."""
    count = len(payload)
    for value in payload.values():
        kind = type(value)
        if kind is dict:
            count += len(value)
        elif kind is list and value and set(map(type, value)) == _ONLY_DICTS:
            count += sum(map(len, value))
    return count


def _count_keys(value: Any) -> int:
    """Keys of every object in a parsed document (iteratively: bodies can be deep)."""
    count, pending = 0, [value]
    while pending:
        item = pending.pop()
        if type(item) is dict:
            count += len(item)
            pending.extend(v for v in item.values() if type(v) in (dict, list))
        elif type(item) is list:
            pending.extend(v for v in item if type(v) in (dict, list))
    return count


def _first_duplicate(body: bytes) -> str:
    found: list[str] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen and not found:
                found.append(key)
            seen.add(key)
        return dict(pairs)

    with contextlib.suppress(ValueError, RecursionError):
        json.loads(body, object_pairs_hook=pairs_hook)
    return found[0] if found else "?"
