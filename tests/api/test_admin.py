"""The admin API: off without a token, bearer auth, and each write lands in the store (only)."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from serving.api.state import get_state
from serving.store.model_store import ModelStore

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN = "/v1/admin/models/iris"


@pytest.fixture
def two_versions(served: ModelStore, iris_artifact_v2: Path) -> ModelStore:
    """iris 1 in production, iris 2 registered; diabetes 1."""
    served.register("iris", iris_artifact_v2, actor="test")
    return served


@pytest.fixture
def admin_app(two_versions: ModelStore, make_app: Callable[..., Flask]) -> Flask:
    return make_app(admin_token=TOKEN)


@pytest.fixture
def admin(admin_app: Flask) -> FlaskClient:
    return admin_app.test_client()


def _deployment(store: ModelStore) -> dict[str, Any]:
    return json.loads(store.deployment_path("iris").read_bytes())


def _post(client: FlaskClient, path: str, body: Any = None, **kwargs: Any) -> Any:
    return client.post(f"{ADMIN}{path}", json=body, headers=AUTH, **kwargs)


# -- off, and auth ---------------------------------------------------------------------------


def test_admin_api_is_off_without_a_token(two_versions: ModelStore, client: FlaskClient) -> None:
    before = two_versions.deployment_path("iris").read_bytes()
    for method, path in (("POST", "/promote"), ("POST", "/rollback"), ("GET", "/history")):
        response = client.open(f"{ADMIN}{path}", method=method, json={"version": 2}, headers=AUTH)
        assert response.status_code == 404
        assert response.get_json()["error"]["code"] == "not_found"
    assert two_versions.deployment_path("iris").read_bytes() == before
    paths = client.get("/openapi.json").get_json()["paths"]
    assert not [path for path in paths if path.startswith("/v1/admin")]


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": f"Basic {TOKEN}"}, 401, "unauthorized"),
        ({"Authorization": "Bearer"}, 401, "unauthorized"),
        ({"Authorization": TOKEN}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong-token"}, 403, "forbidden"),
        ({"Authorization": f"Bearer {TOKEN}x"}, 403, "forbidden"),
        ({"Authorization": f"Bearer {TOKEN}"}, 200, None),
        ({"Authorization": f"bearer {TOKEN}"}, 200, None),
    ],
    ids=["none", "basic", "empty", "no-scheme", "wrong", "longer", "right", "lowercase-scheme"],
)
def test_bearer_token_is_required(
    admin: FlaskClient, headers: dict[str, str], status: int, code: str | None
) -> None:
    response = admin.get(f"{ADMIN}/history", headers=headers)
    assert response.status_code == status
    if code is not None:
        assert response.get_json()["error"]["code"] == code
    challenged = response.headers.get("WWW-Authenticate", "")
    assert challenged.startswith("Bearer") if status == 401 else challenged == ""


def test_a_wrong_token_changes_nothing(admin: FlaskClient, two_versions: ModelStore) -> None:
    before = two_versions.deployment_path("iris").read_bytes()
    events = len(two_versions.history("iris"))
    response = admin.post(
        f"{ADMIN}/promote", json={"version": 2}, headers={"Authorization": "Bearer nope"}
    )
    assert response.status_code == 403
    assert two_versions.deployment_path("iris").read_bytes() == before
    assert len(two_versions.history("iris")) == events


def test_token_is_compared_in_constant_time(
    admin: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert admin.get(f"{ADMIN}/history", headers={"Authorization": "Bearer x"}).status_code == 403
    assert admin.get(f"{ADMIN}/history", headers=AUTH).status_code == 200
    assert calls == [(b"x", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


# -- each operation writes the store and the audit -------------------------------------------


def test_promote_moves_the_alias_and_audits_the_client(
    admin: FlaskClient, two_versions: ModelStore
) -> None:
    response = _post(admin, "/promote", {"version": 2})
    assert response.status_code == 200
    body = response.get_json()
    assert (body["action"], body["alias"], body["previous"], body["version"]) == (
        "promote",
        "production",
        1,
        2,
    )
    assert _deployment(two_versions)["aliases"] == {"production": 2}
    assert body["deployment"] == _deployment(two_versions)
    event = two_versions.history("iris")[-1]
    assert event["action"] == "promote" and event["version"] == 2 and event["previous"] == 1
    assert event["actor"] == "admin-api@127.0.0.1"


def test_promote_with_an_alias_and_the_alias_endpoint(
    admin: FlaskClient, two_versions: ModelStore
) -> None:
    assert _post(admin, "/promote", {"version": 2, "alias": "staging"}).status_code == 200
    assert _post(admin, "/aliases/canary", {"version": 1}).status_code == 200
    assert _deployment(two_versions)["aliases"] == {"production": 1, "staging": 2, "canary": 1}
    assert [e["alias"] for e in two_versions.history("iris")[-2:]] == ["staging", "canary"]


def test_rollback_returns_to_the_previous_version(
    admin: FlaskClient, two_versions: ModelStore
) -> None:
    _post(admin, "/promote", {"version": 2})
    response = admin.post(f"{ADMIN}/rollback", headers=AUTH)  # no body: production
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["version"] == 1
    assert _deployment(two_versions)["aliases"]["production"] == 1
    assert two_versions.history("iris")[-1]["action"] == "rollback"


def test_rollback_of_a_named_alias(admin: FlaskClient, two_versions: ModelStore) -> None:
    _post(admin, "/aliases/staging", {"version": 1})
    _post(admin, "/aliases/staging", {"version": 2})
    assert _post(admin, "/rollback", {"alias": "staging"}).get_json()["version"] == 1
    assert _deployment(two_versions)["aliases"] == {"production": 1, "staging": 1}


def test_rollback_with_nothing_earlier_is_a_422(admin: FlaskClient) -> None:
    response = _post(admin, "/rollback", {})
    assert response.status_code == 422
    assert "no earlier version" in response.get_json()["error"]["message"]


def test_route_writes_the_split_and_the_audit(
    admin: FlaskClient, admin_app: Flask, two_versions: ModelStore
) -> None:
    response = _post(admin, "/route", {"weights": {"1": 90, "2": 10}, "sticky": True})
    assert response.status_code == 200, response.get_json()
    route = _deployment(two_versions)["routes"]["production"]
    assert route["variants"] == [{"version": 1, "weight": 90.0}, {"version": 2, "weight": 10.0}]
    assert route["sticky"] is True and response.get_json()["route"] == route
    event = two_versions.history("iris")[-1]
    assert event["action"] == "route" and event["route"] == route
    # a worker shows the split once it has polled the store (here: by hand)
    get_state(admin_app).loader.refresh()
    shown = admin.get("/v1/models/iris").get_json()
    assert shown["routes"]["production"] == route
    live = shown["worker"]["routes"]["production"]
    assert live["variants"] == [{"version": 1, "share": 0.9}, {"version": 2, "share": 0.1}]


def test_rollback_of_a_split_goes_back_to_the_version_before_it(
    admin: FlaskClient, two_versions: ModelStore
) -> None:
    _post(admin, "/route", {"weights": {"1": 90, "2": 10}})
    _post(admin, "/route", {"weights": {"1": 20, "2": 80}})  # ramped: 2 is now the primary
    assert _deployment(two_versions)["aliases"]["production"] == 2
    response = _post(admin, "/rollback", {})
    assert response.status_code == 200 and response.get_json()["version"] == 1
    deployment = _deployment(two_versions)
    assert deployment["aliases"]["production"] == 1 and "production" not in deployment["routes"]


def test_shadow_on_and_off(admin: FlaskClient, two_versions: ModelStore) -> None:
    assert _post(admin, "/shadow", {"version": 2}).status_code == 200
    assert _deployment(two_versions)["shadows"] == {"production": 2}
    response = _post(admin, "/shadow", {"version": None})
    assert response.status_code == 200 and response.get_json()["previous"] == 2
    assert _deployment(two_versions)["shadows"] == {}
    assert [e["shadow"] for e in two_versions.history("iris")[-2:]] == [2, None]


def test_history_returns_the_latest_events(admin: FlaskClient) -> None:
    _post(admin, "/promote", {"version": 2})
    _post(admin, "/rollback")
    body = admin.get(f"{ADMIN}/history?limit=2", headers=AUTH).get_json()
    assert [e["action"] for e in body["events"]] == ["promote", "rollback"]
    everything = admin.get(f"{ADMIN}/history", headers=AUTH).get_json()["events"]
    assert [e["action"] for e in everything] == [
        "register",
        "promote",
        "register",
        "promote",
        "rollback",
    ]
    for query in ("limit=0", "limit=abc", "limit=5000", "other=1"):
        assert admin.get(f"{ADMIN}/history?{query}", headers=AUTH).status_code == 422, query


# -- refusals change nothing -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"weights": {"1": -10, "2": 110}}, ">= 0"),
        ({"weights": {"1": 0, "2": 0}}, "all be zero"),
        ({"weights": {"1": 50, "9": 50}}, "does not exist"),
        ({"weights": {"1": "90", "2": 10}}, "weights"),
        ({"weights": {"1": True, "2": 10}}, "weights"),
        ({"weights": {"one": 50, "2": 50}}, "weights"),
        ({"weights": {}}, "at least one"),
        ({"weights": [90, 10]}, "weights"),
        ({}, "weights"),
        ({"weights": {"1": 90}, "sticky": "yes"}, "sticky"),
        ({"weights": {"1": 90}, "alias": "../x"}, "alias"),
        ({"weights": {"1": 90}, "extra": 1}, "extra"),
    ],
    ids=[
        "negative",
        "all-zero",
        "unknown-version",
        "string-weight",
        "boolean-weight",
        "non-numeric-version",
        "empty",
        "not-an-object",
        "missing",
        "sticky-not-boolean",
        "bad-alias",
        "unknown-field",
    ],
)
def test_bad_routes_are_422_and_change_nothing(
    admin: FlaskClient, two_versions: ModelStore, body: dict[str, Any], where: str
) -> None:
    _post(admin, "/route", {"weights": {"1": 50, "2": 50}})
    before = two_versions.deployment_path("iris").read_bytes()
    events = len(two_versions.history("iris"))
    response = _post(admin, "/route", body)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert where in json.dumps(error)
    assert two_versions.deployment_path("iris").read_bytes() == before
    assert len(two_versions.history("iris")) == events


def test_non_finite_weight_is_422(admin: FlaskClient, two_versions: ModelStore) -> None:
    before = two_versions.deployment_path("iris").read_bytes()
    for raw in (b'{"weights": {"1": NaN}}', b'{"weights": {"1": 1e999, "2": 1}}'):
        response = admin.post(
            f"{ADMIN}/route", data=raw, content_type="application/json", headers=AUTH
        )
        assert response.status_code == 422, raw
    assert two_versions.deployment_path("iris").read_bytes() == before


@pytest.mark.parametrize(
    ("path", "kwargs", "status"),
    [
        ("/v1/admin/models/nope/promote", {"json": {"version": 1}}, 404),
        ("/v1/admin/models/nope/shadow", {"json": {"version": None}}, 404),
        ("/v1/admin/models/nope/rollback", {}, 404),
        (f"{ADMIN}/promote", {"json": {"version": 7}}, 404),
        (f"{ADMIN}/promote", {"json": {"version": "2"}}, 422),
        (f"{ADMIN}/shadow", {"json": {"version": 0}}, 422),
        (f"{ADMIN}/shadow", {"json": {}}, 422),
        (f"{ADMIN}/aliases/staging", {"json": {"version": 2.5}}, 422),
        (f"{ADMIN}/promote", {"data": b"{not json", "content_type": "application/json"}, 400),
        (f"{ADMIN}/promote", {"data": b"version=2", "content_type": "text/plain"}, 415),
    ],
    ids=[
        "unknown-model",
        "unknown-model-shadow-off",
        "unknown-model-rollback",
        "unknown-version",
        "version-as-string",
        "version-zero",
        "shadow-without-version",
        "fractional-version",
        "malformed-json",
        "not-json",
    ],
)
def test_refusals_use_the_v1_error_shape(
    admin: FlaskClient,
    two_versions: ModelStore,
    path: str,
    kwargs: dict[str, Any],
    status: int,
) -> None:
    before = two_versions.deployment_path("iris").read_bytes()
    response = admin.post(path, headers=AUTH, **kwargs)
    assert response.status_code == status
    assert set(response.get_json()["error"]) >= {"code", "message"}
    assert two_versions.deployment_path("iris").read_bytes() == before
    assert not (two_versions.root / "nope").exists()


def test_openapi_declares_bearer_security_for_admin_operations(admin: FlaskClient) -> None:
    spec = admin.get("/openapi.json").get_json()
    assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    admin_ops = [
        (path, op)
        for path, item in spec["paths"].items()
        if path.startswith("/v1/admin/")
        for op in item.values()
    ]
    assert len(admin_ops) == 6
    for path, op in admin_ops:
        assert op["security"] == [{"bearer": []}], path
        assert {"401", "403"} <= set(op["responses"]), path
    history = spec["paths"]["/v1/admin/models/{name}/history"]["get"]
    assert any(p["name"] == "limit" and p["in"] == "query" for p in history["parameters"])
    assert "security" not in spec["paths"]["/v1/models/{name}/predict"]["post"]
