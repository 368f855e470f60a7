"""The conformance check every API test runs is real: it refuses what the document forbids."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.openapi_check import ConformingClient, SchemaViolation, SpecChecker


@pytest.fixture
def checker(make_app: Callable[..., Flask]) -> SpecChecker:
    return SpecChecker(make_app())


def test_api_tests_get_a_conforming_client(client: FlaskClient) -> None:
    assert isinstance(client, ConformingClient)


def test_a_field_the_schema_does_not_declare_is_a_violation(checker: SpecChecker) -> None:
    body = b'{"name": "iris", "versions": [1], "aliases": {}, "serving": {}, "problems": {},'
    body += b' "worker": {}, "surprise": 1}'
    with pytest.raises(SchemaViolation, match="surprise"):
        checker.check("GET", "/v1/models/{name}", 200, "application/json", body)


def test_a_wrong_type_is_a_violation(checker: SpecChecker) -> None:
    with pytest.raises(SchemaViolation, match="/v1/models"):
        checker.check("GET", "/v1/models", 200, "application/json", b'{"models": 3}')


def test_an_undocumented_status_is_a_violation(checker: SpecChecker) -> None:
    with pytest.raises(SchemaViolation, match="does not document"):
        checker.check("GET", "/v1/models", 422, "application/json", b"{}")


def test_a_conforming_answer_passes(checker: SpecChecker) -> None:
    checker.check("GET", "/v1/models", 200, "application/json", b'{"models": []}')
