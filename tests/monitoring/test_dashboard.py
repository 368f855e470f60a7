"""The dashboard: traffic counters, percentiles from log bins, the data endpoint, the page.

The tests that read or write the store run on SQLite and on a real PostgreSQL (`database_url`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from serving.api.dashboard import WEB
from serving.api.state import get_monitor
from serving.cli.main import main
from serving.monitoring import traffic
from serving.monitoring.counts import COMPONENT, MIGRATIONS
from serving.monitoring.monitor import Monitor
from serving.store.model_store import ModelStore
from serving.telemetry.datastore import DataStore
from tests.conftest import ENGINES, IRIS_ROW, engine_url
from tests.telemetry.test_prometheus import scrape

SHORT_ROW = [5.1, 3.5, 1.4]  # one feature short: a 422 after the model was chosen


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest) -> str | None:
    return engine_url(request)


def _data(client: FlaskClient, query: str = "") -> dict:
    response = client.get(f"/v1/dashboard/data{query}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def _predict(client: FlaskClient, rows: list, name: str = "iris", **extra: object) -> int:
    response = client.post(f"/v1/models/{name}/predict", json={"instances": rows, **extra})
    response.close()  # runs a shadow, if any (call_on_close)
    return response.status_code


# -- percentiles from histograms ---------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.0], ids=["narrow", "wide", "very-wide"])
def test_percentiles_from_log_bins_are_within_a_few_percent(sigma: float) -> None:
    rng = np.random.default_rng(7)
    latencies = rng.lognormal(mean=np.log(2.0), sigma=sigma, size=20_000)  # ms, median 2 ms
    histogram: dict[int, float] = {}
    for ms in latencies:
        index = traffic.latency_bin(float(ms))
        histogram[index] = histogram.get(index, 0) + 1
    for q in (0.5, 0.95, 0.99):
        exact = float(np.quantile(latencies, q))
        estimate = traffic.percentile(histogram, q)
        assert estimate == pytest.approx(exact, rel=0.03), (q, exact, estimate)


def test_percentile_edge_cases() -> None:
    assert traffic.percentile({}, 0.5) is None
    assert traffic.percentile({5: 0}, 0.5) is None
    one = traffic.latency_bin(1.0)  # 1 ms falls in [1.0, 1.122)
    assert traffic.bin_bounds(one)[0] == pytest.approx(1.0)
    assert 1.0 <= traffic.percentile({one: 10}, 0.5) <= 1.13  # type: ignore[operator]
    assert traffic.latency_bin(0.0) == 0 and traffic.percentile({0: 4}, 1.0) == pytest.approx(0.1)
    beyond = traffic.latency_bin(10**6)
    assert beyond == len(traffic.EDGES_MS)
    assert traffic.percentile({beyond: 3}, 0.99) == pytest.approx(100_000)  # "100 s or more"


def test_queue_counts_by_bucket_status_and_latency_bin() -> None:
    now = [1_000_003.0]
    queue = traffic.TrafficQueue(lambda: now[0])
    queue.count("iris", 1, None, 200, 1.0)
    queue.count("iris", 1, None, 200, 1.01)
    queue.count("iris", 1, "v1", 422, 1.0)
    now[0] += 10
    queue.count(None, None, None, 404, 0.2)
    counts = queue.drain()
    assert counts == {
        (1_000_000, "iris", 1, "", 200, traffic.latency_bin(1.0)): 2,
        (1_000_000, "iris", 1, "v1", 422, traffic.latency_bin(1.0)): 1,
        (1_000_010, "", 0, "", 404, traffic.latency_bin(0.2)): 1,
    }
    assert queue.drain() == {}


def test_every_counted_request_reaches_the_table_once(
    served: ModelStore, tmp_path: Path, database_url: str | None
) -> None:
    """Counting is a deque append on the hot path (its cost is in bench/hotpath.py); the
    flusher bins the queue: n counts in, n requests in `traffic_counts`, none twice."""
    store = DataStore(tmp_path / "data", database_url)
    monitor = Monitor(store, served, flush_interval=3600)
    n = 5_000
    try:
        for i in range(n):
            monitor.count("iris", 1, None, 200 if i % 10 else 422, 0.8 + i % 7)
        monitor.flush()
        monitor.flush()  # nothing left to add
        rows = dict(
            store.connect()
            .execute(
                "SELECT status, SUM(n) FROM traffic_counts WHERE model = 'iris' GROUP BY status"
            )
            .fetchall()
        )
    finally:
        monitor.close()
    assert rows == {200: n - n // 10, 422: n // 10}


# -- the data endpoint --------------------------------------------------------------------------


def test_empty_state_answers_zeros_and_lists_the_models(client: FlaskClient) -> None:
    body = _data(client)
    assert body["window"] == "15m" and body["step"] == 10 and body["monitoring"] is True
    assert len(body["series"]["t"]) >= 90
    assert set(body["series"]["requests_per_s"]) == {0}
    assert set(body["series"]["p99_ms"]) == {None}
    assert body["series"]["by_version"] == []
    assert body["totals"]["requests"] == 0 and body["totals"]["p50_ms"] is None
    assert [m["name"] for m in body["models"]] == ["diabetes", "iris"]
    assert all(m["traffic"] == [] for m in body["models"])
    # served registers without reference data: the page must say so
    assert {m["drift"]["status"] for m in body["models"]} == {"no_reference"}
    assert all("without reference data" in m["drift"]["note"] for m in body["models"])
    assert [s["action"] for s in body["swaps"]] == ["promote", "promote"]


def test_empty_store(store: ModelStore, make_app: Callable[..., Flask]) -> None:
    body = _data(make_app().test_client(), "?window=1h")
    assert body["models"] == [] and body["swaps"] == [] and body["totals"]["requests"] == 0
    assert body["step"] == 40 and len(body["series"]["t"]) <= 91


@pytest.mark.parametrize(
    ("query", "status"),
    [("?model=nope", 404), ("?window=forever", 422), ("?window=0m", 422), ("?colour=red", 422)],
    ids=["unknown-model", "bad-window", "empty-window", "unknown-parameter"],
)
def test_bad_queries(client: FlaskClient, query: str, status: int) -> None:
    response = client.get(f"/v1/dashboard/data{query}")
    assert response.status_code == status
    assert set(response.get_json()["error"]) >= {"code", "message"}


def test_traffic_per_version_errors_and_latency_of_two_workers(
    store: ModelStore,
    make_app: Callable[..., Flask],
    iris_artifact: Path,
    iris_artifact_v2: Path,
    iris_reference: Path,
) -> None:
    store.register("iris", iris_artifact, iris_reference, activate=True, actor="test")
    store.register("iris", iris_artifact_v2, actor="test")
    first, second = make_app(), make_app()  # two workers over one data directory
    one, two = first.test_client(), second.test_client()
    for _ in range(30):
        assert _predict(one, [IRIS_ROW]) == 200
    for _ in range(5):
        assert _predict(two, [SHORT_ROW]) == 422
        assert _predict(two, [IRIS_ROW], name="nope") == 404
    assert one.get("/v1/models").status_code == 200  # not prediction traffic: not counted
    store.promote("iris", 2, actor="ops")
    for app in (first, second):
        app.extensions["serving"].loader.refresh()
    for _ in range(20):
        assert _predict(two, [IRIS_ROW]) == 200
    get_monitor(first).flush()  # type: ignore[union-attr]  # the other's own flush is in the call

    body = _data(two)
    totals = body["totals"]
    assert totals["requests"] == 60 and totals["client_errors"] == 10
    assert totals["server_errors"] == 0 and totals["unrouted"] == 5
    assert totals["error_rate"] == pytest.approx(10 / 60, abs=1e-4)
    assert 0 < totals["p50_ms"] <= totals["p95_ms"] <= totals["p99_ms"]
    assert sum(v for v in body["series"]["requests_per_s"] if v) > 0
    assert any(v for v in body["series"]["client_error_rate"] if v)
    (iris,) = (m for m in body["models"] if m["name"] == "iris")
    assert iris["aliases"] == {"production": 2}
    rows = {
        (r["version"], r["variant"]): (r["requests"], r["client_errors"]) for r in iris["traffic"]
    }
    assert rows == {(1, None): (35, 5), (2, None): (20, 0)}
    lines = {(s["model"], s["version"]) for s in body["series"]["by_version"]}
    assert lines == {("iris", 1), ("iris", 2)}
    assert body["swaps"][0] | {"at": None} == {
        "model": "iris",
        "at": None,
        "action": "promote",
        "actor": "ops",
        "alias": "production",
        "previous": 1,
        "version": 2,
    }
    # drift follows production (v2: no reference) ...
    assert iris["drift"]["version"] == 2 and iris["drift"]["status"] == "no_reference"
    # ... and one model at a time
    only = _data(two, "?model=iris&window=5m")
    assert [m["name"] for m in only["models"]] == ["iris"] and only["totals"]["requests"] == 55


def test_drift_summary_ranks_the_worst_features_with_histograms(
    store: ModelStore,
    make_app: Callable[..., Flask],
    iris_artifact: Path,
    iris_reference: Path,
) -> None:
    store.register("iris", iris_artifact, iris_reference, activate=True, actor="test")
    client = make_app().test_client()
    for _ in range(60):
        assert _predict(client, [IRIS_ROW]) == 200  # one flower, again and again: drift
    drift = next(m for m in _data(client)["models"] if m["name"] == "iris")["drift"]
    assert drift["reference"] is True and drift["rows"] == 60 and drift["status"] == "alert"
    assert len(drift["features"]) == 4 and len(drift["worst"]) == 3
    psis = [f["psi"] for f in drift["worst"]]
    assert psis == sorted(psis, reverse=True)
    for feature in drift["worst"]:
        hist = feature["histogram"]
        assert len(hist["bins"]) == len(hist["reference"]) == len(hist["live"])
        assert sum(hist["live"]) == pytest.approx(1.0)
    assert drift["output"]["kind"] == "classes" and drift["predictions"] == {"setosa": 60}


def test_monitoring_off_says_so(served: ModelStore, make_app: Callable[..., Flask]) -> None:
    client = make_app(monitor_flush=0).test_client()
    assert _predict(client, [IRIS_ROW]) == 200
    body = _data(client)
    assert body["monitoring"] is False and body["totals"]["requests"] == 0


def test_an_older_data_store_gets_the_traffic_table(
    served: ModelStore, make_app: Callable[..., Flask], tmp_path: Path, database_url: str | None
) -> None:
    old = DataStore(tmp_path / "data", database_url)
    old.ensure_schema(COMPONENT, MIGRATIONS[:1])  # a store written before the dashboard
    old.close()
    client = make_app().test_client()
    assert _predict(client, [IRIS_ROW]) == 200
    assert _data(client)["totals"]["requests"] == 1
    new = DataStore(tmp_path / "data", database_url)
    try:
        version = new.connect().execute(
            "SELECT version FROM schema_version WHERE component = ?", (COMPONENT,)
        )
        assert version.fetchone() == (len(MIGRATIONS),)
    finally:
        new.close()


# -- what counts as served traffic ---------------------------------------------------------------


def test_shadow_predictions_are_not_served_traffic(
    store: ModelStore,
    make_app: Callable[..., Flask],
    iris_artifact: Path,
    iris_artifact_v2: Path,
    iris_reference: Path,
) -> None:
    store.register("iris", iris_artifact, iris_reference, activate=True, actor="t")
    store.register("iris", iris_artifact_v2, iris_reference, actor="t")
    store.shadow("iris", 2, actor="t")
    client = make_app().test_client()
    for _ in range(10):
        assert _predict(client, [IRIS_ROW]) == 200
    body = _data(client)
    (iris,) = body["models"]
    assert [(r["version"], r["requests"]) for r in iris["traffic"]] == [(1, 10)]
    assert iris["shadows"] == {"production": 2}
    requests = {
        s.labels["version"]: s.value
        for s in scrape(client)
        if s.name == "serving_requests_total" and s.labels["model"] == "iris"
    }
    assert requests == {"1": 10}
    v2 = client.get("/v1/models/iris/monitoring?version=2").get_json()
    assert v2["rows"] == 0  # the shadow's inputs are not counted as v2's live traffic


def test_confidence_is_counted_only_when_probabilities_were_computed(
    store: ModelStore, make_app: Callable[..., Flask], iris_artifact: Path, iris_reference: Path
) -> None:
    store.register("iris", iris_artifact, iris_reference, activate=True, actor="t")
    client = make_app().test_client()
    for _ in range(7):
        assert _predict(client, [IRIS_ROW, IRIS_ROW]) == 200
    for _ in range(3):
        assert _predict(client, [IRIS_ROW], return_proba=True) == 200
    report = client.get("/v1/models/iris/monitoring").get_json()
    assert report["rows"] == 17 and report["confidence"]["rows"] == 3


# -- the page ------------------------------------------------------------------------------------


def test_page_and_assets_are_served_locally_with_a_strict_policy(client: FlaskClient) -> None:
    with client.get("/dashboard") as page:  # a file response: closed, or it warns
        assert page.status_code == 200 and page.mimetype == "text/html"
        policy = page.headers["Content-Security-Policy"]
        html = page.get_data(as_text=True)
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sorted(assets) == ["/dashboard/dashboard.css", "/dashboard/dashboard.js"]
    for asset in assets:
        with client.get(asset) as response:
            assert response.status_code == 200 and len(response.data) > 1000, asset
    assert client.get("/dashboard/dashboard.html.bak").status_code == 404
    assert client.get("/dashboard/..%2Fapp.py").status_code == 404


def test_page_loads_nothing_from_elsewhere_and_never_parses_names_as_html() -> None:
    for name in ("dashboard.html", "dashboard.js", "dashboard.css"):
        text = (WEB / name).read_text()
        urls = re.findall(r"https?://[^\s\"')]+", text)
        assert set(urls) <= {"http://www.w3.org/2000/svg"}, name
    script = (WEB / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script


def test_openapi_documents_the_dashboard(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    data = paths["/v1/dashboard/data"]["get"]
    assert {p["name"] for p in data["parameters"]} == {"window", "model"}
    assert "/dashboard" in paths


def test_cli_traffic_shows_who_served_what(
    served: ModelStore,
    make_app: Callable[..., Flask],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    database_url: str | None,
) -> None:
    if database_url:  # the command line reads the server's database
        monkeypatch.setenv("SERVING_DATABASE_URL", database_url)
    app = make_app()
    client = app.test_client()
    for _ in range(4):
        assert _predict(client, [IRIS_ROW]) == 200
    assert _predict(client, [SHORT_ROW]) == 422
    get_monitor(app).flush()  # type: ignore[union-attr]
    base = ["--store", str(served.root), "traffic", "--data-dir", str(tmp_path / "data")]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "5 requests" in out and "4xx 20.0%" in out
    row = next(line.split() for line in out.splitlines() if line.startswith("iris "))
    assert row[:6] == ["iris", "1", "-", "5", "20.0%", "0.0%"]
    assert "iris: production -> v1; drift of v1: no_reference" in out
    assert main([*base, "--json", "--window", "5m"]) == 0
    assert '"requests": 5' in capsys.readouterr().out
    assert main([*base[:3], "nope", *base[3:]]) == 1
    assert "'nope' is not in the store" in capsys.readouterr().err
