"""Duplicate keys are found wherever they are, and nothing else is mistaken for one."""

from __future__ import annotations

import json

import orjson
import pytest

from serving.errors import MalformedRequest
from serving.protocols.strict_json import check_no_duplicate_keys


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[1, 2]], "instances": [[3, 4]]}',
        b'{"instances": [{"a": 1, "a": 2}]}',
        b'{"instances": [{"a": 1}, {"b": 2, "c": 3, "b": 4}]}',
        b'{"x": {"y": {"z": 1, "z" : 2}}}',
        b'{"a\\"b": 1, "a\\"b": 2}',
    ],
    ids=["top-level", "in-a-row", "in-a-later-row", "nested", "escaped-quote"],
)
def test_a_repeated_key_is_refused_and_named(body: bytes) -> None:
    with pytest.raises(MalformedRequest, match="appears twice") as caught:
        check_no_duplicate_keys(body, orjson.loads(body))
    assert caught.value.details["duplicate_key"] in {"instances", "a", "b", "z", 'a"b'}


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[1, 2]], "return_proba": true}',
        b'{"instances": [{"a": "x:y", "b": "\\"a\\": 1"}, {"a": "a", "b": ":"}]}',
        b'{"instances": ["instances", "instances"]}',
        b'{"a": {"a": {"a": 1}}}',
        b"[[1, 2], [3, 4]]",
        b'{"k": "quote \\\\"}',
    ],
    ids=["plain", "colons-in-strings", "key-like-values", "same-key-nested", "no-object", "bs"],
)
def test_no_false_alarm(body: bytes) -> None:
    check_no_duplicate_keys(body, json.loads(body))
