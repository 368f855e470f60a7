"""The OpenAPI document covers every route and the docs page needs no network."""

from __future__ import annotations

import re

from flask.testing import FlaskClient

from serving.api.openapi import documented_rules


def test_every_route_is_in_the_openapi_document(client: FlaskClient) -> None:
    documented, missing = documented_rules(client.application)
    assert missing == []
    paths = client.get("/openapi.json").get_json()["paths"]
    for rule in documented:
        assert re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule) in paths


def test_spec_describes_the_error_shape_and_the_predict_body(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    predict = spec["paths"]["/v1/models/{name}/predict"]["post"]
    assert set(predict["responses"]) >= {"200", "400", "404", "413", "415", "422", "503"}
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    body = spec["components"]["schemas"]["PredictRequest"]
    assert body["required"] == ["instances"] and body["additionalProperties"] is False


def test_docs_page_loads_everything_from_this_server(client: FlaskClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html
    for asset in re.findall(r'(?:src|href)="(/docs/static/[^"]+)"', html):
        with client.get(asset) as response:
            assert response.status_code == 200 and len(response.data) > 100, asset


def test_docs_static_serves_only_known_files(client: FlaskClient) -> None:
    for name in ("..%2Fgunicorn.conf.py", "index.html"):
        with client.get(f"/docs/static/{name}") as response:
            assert response.status_code == 404
