"""Feedback joined with logged predictions, the A/B statistics and the verdict.

The tests that read or write the store run on SQLite and on a real PostgreSQL (`database_url`)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from scipy import stats

from serving.api.feedback import ABReportSchema, FeedbackResponseSchema
from serving.api.state import get_state
from serving.cli.main import main
from serving.rollouts import abtest
from serving.rollouts import stats as ab_stats
from serving.settings import Settings
from serving.store.model_store import ModelStore
from serving.telemetry.datastore import DataStore
from serving.telemetry.feedback import Feedback, store_feedback
from serving.telemetry.predlog import SQLiteRecorder
from serving.telemetry.recorder import PredictionRecord
from serving.telemetry.window import WindowRows
from tests.conftest import ENGINES, IRIS_ROW, engine_url

NOW = 1_800_000_000.0


@pytest.fixture
def split(store: ModelStore, iris_artifact: Path, iris_artifact_v2: Path) -> ModelStore:
    store.register("iris", iris_artifact, activate=True, actor="t")
    store.register("iris", iris_artifact_v2, actor="t")
    store.route("iris", {1: 50, 2: 50}, sticky=True, actor="t")
    return store


@pytest.fixture
def app(split: ModelStore, make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest) -> str | None:
    return engine_url(request)


@pytest.fixture
def datastore(tmp_path: Path, database_url: str | None) -> Iterator[DataStore]:
    store = DataStore(tmp_path / "synthetic", database_url)
    yield store
    store.close()


def predict(client: FlaskClient, key: str, rows: int = 1) -> dict[str, Any]:
    response = client.post(
        "/v1/models/iris/predict",
        json={"instances": [IRIS_ROW] * rows},
        headers={"X-Routing-Key": key},
    )
    response.close()  # runs a shadow, as gunicorn does after sending
    assert response.status_code == 200
    return response.get_json()


# -- POST /v1/feedback -----------------------------------------------------------------------


def test_feedback_single_and_batch_are_joined_with_logged_predictions(
    client: FlaskClient,
) -> None:
    first, second = predict(client, "a"), predict(client, "b", rows=3)
    one = client.post(
        "/v1/feedback", json={"request_id": first["request_id"], "label": "setosa"}
    ).get_json()
    batch = client.post(
        "/v1/feedback",
        json={
            "feedback": [
                {"request_id": second["request_id"], "label": "setosa", "row": row}
                for row in range(3)
            ]
        },
    )
    assert FeedbackResponseSchema().validate(batch.get_json()) == {}
    assert one == {"accepted": 1, "unknown": [], "invalid_rows": [], "overwritten": 0}
    assert batch.get_json() == {"accepted": 3, "unknown": [], "invalid_rows": [], "overwritten": 0}
    report = client.get("/v1/models/iris/ab").get_json()
    assert sum(v["feedback"]["labelled"] for v in report["variants"] if v["feedback"]) == 4


def test_feedback_reports_unknown_ids_and_rows_the_prediction_does_not_have(
    client: FlaskClient,
) -> None:
    known = predict(client, "a")["request_id"]
    body = client.post(
        "/v1/feedback",
        json={
            "feedback": [
                {"request_id": known, "label": "setosa"},
                {"request_id": "never-seen", "label": "setosa"},
                {"request_id": known, "label": "setosa", "row": 5},
            ]
        },
    ).get_json()
    assert body == {
        "accepted": 1,
        "unknown": ["never-seen"],
        "invalid_rows": [{"request_id": known, "row": 5, "rows": 1}],
        "overwritten": 0,
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"request_id": "a", "label": "x", "value": 1.0}, "_schema"),
        ({"request_id": "a"}, "_schema"),
        ({"label": "x"}, "request_id"),
        ({"request_id": "a b", "label": "x"}, "request_id"),
        ({"request_id": "a", "label": {"nested": 1}}, "label"),
        ({"request_id": "a", "value": "1.5"}, "value"),
        ({"request_id": "a", "value": True}, "value"),
        ({"request_id": "a", "label": "x", "row": -1}, "row"),
        ({"request_id": "a", "label": "x", "extra": 1}, "extra"),
        ({"feedback": []}, "feedback"),
        ({"feedback": [{"request_id": "a", "label": "x"}] * 1001}, "feedback"),
        ({"feedback": [{"request_id": "a"}]}, "feedback"),
        ({"feedback": [{"request_id": "a", "label": "x"}], "request_id": "b"}, "_schema"),
    ],
    ids=[
        "label-and-value",
        "no-truth",
        "no-request-id",
        "bad-request-id",
        "object-label",
        "string-value",
        "boolean-value",
        "negative-row",
        "unknown-field",
        "empty-batch",
        "batch-too-large",
        "batch-item-without-truth",
        "batch-and-single",
    ],
)
def test_feedback_refuses_bad_bodies_with_field_details(
    client: FlaskClient, body: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/feedback", json=body)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "invalid_input" and field in error["details"]
    if field == "feedback" and "0" in error["details"]["feedback"]:  # the item, by index
        assert "_schema" in error["details"]["feedback"]["0"]


def test_feedback_with_nan_value_is_refused(client: FlaskClient) -> None:
    response = client.post(
        "/v1/feedback",
        data=b'{"request_id": "a", "value": NaN}',
        content_type="application/json",
    )
    assert response.status_code == 422


# -- the statistics --------------------------------------------------------------------------


def test_wilson_interval_matches_published_values() -> None:
    low, high = ab_stats.wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert ab_stats.wilson_interval(0, 10)[0] == 0.0
    assert ab_stats.wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_two_proportion_test_is_the_uncorrected_chi_square() -> None:
    z, p = ab_stats.two_proportion_test(160, 200, 176, 200)
    chi2, chi_p, _, _ = stats.chi2_contingency([[160, 40], [176, 24]], correction=False)
    assert z == pytest.approx(math.sqrt(chi2)) and p == pytest.approx(chi_p)


def test_sample_size_matches_the_classic_two_proportion_formula() -> None:
    p1, p2 = 0.80, 0.88
    h = abs(2 * math.asin(math.sqrt(p2)) - 2 * math.asin(math.sqrt(p1)))
    za, zb = stats.norm.ppf(0.975), stats.norm.ppf(0.80)
    pooled = (p1 + p2) / 2
    classic = (
        za * math.sqrt(2 * pooled * (1 - pooled)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    ) ** 2 / (p1 - p2) ** 2
    needed = ab_stats.needed_per_group(h)
    assert needed is not None and abs(needed - classic) / classic < 0.03


def classifier_rows(spec: dict[int, tuple[int, int]], requests: int | None = None) -> WindowRows:
    """{version: (labelled, correct)}: one single-row request per labelled prediction."""
    reqs, outputs, labelled = [], [], []
    for version, (n, correct) in spec.items():
        reqs += [(version, 200, 2.0 + version, 1)] * (requests or n)
        outputs.append((version, "setosa", requests or n))
        labelled += [(version, "setosa", "setosa")] * correct
        labelled += [(version, "setosa", "virginica")] * (n - correct)
    return WindowRows(reqs, outputs, labelled, [])


def test_verdict_when_b_is_truly_better_names_b() -> None:
    body = abtest.report(classifier_rows({1: (2000, 1600), 2: (2000, 1760)}), "classifier", 1)
    v1, v2 = body["variants"]
    assert (v1["feedback"]["value"], v2["feedback"]["value"]) == (0.80, 0.88)
    assert v2["feedback"]["ci95"][0] < 0.88 < v2["feedback"]["ci95"][1]
    assert v2["vs_primary"]["significant"] and v2["vs_primary"]["p_value"] < 1e-9
    assert body["verdict"]["winner"] == "v2"
    assert body["verdict"]["text"].startswith("v2 wins over v1: accuracy 0.880 vs 0.800")


def test_verdict_when_b_is_truly_worse_names_the_primary() -> None:
    body = abtest.report(classifier_rows({1: (2000, 1760), 2: (2000, 1600)}), "classifier", 1)
    assert body["verdict"]["winner"] == "v1"
    assert body["verdict"]["text"].startswith("v1 wins over v2")


def test_verdict_with_equal_accuracy_has_no_winner_and_says_the_effect_is_zero() -> None:
    body = abtest.report(classifier_rows({1: (2000, 1600), 2: (2000, 1600)}), "classifier", 1)
    comparison = body["variants"][1]["vs_primary"]
    assert comparison["p_value"] == 1.0 and comparison["needed_per_variant"] is None
    assert body["verdict"]["winner"] is None
    assert "no significant difference yet" in body["verdict"]["text"]
    assert "about zero" in body["verdict"]["text"]


def test_verdict_with_a_small_difference_says_how_much_more_data_is_needed() -> None:
    rng = np.random.default_rng(7)
    spec = {v: (2000, int((rng.random(2000) < 0.80).sum())) for v in (1, 2)}  # same truth
    body = abtest.report(classifier_rows(spec), "classifier", 1)
    comparison = body["variants"][1]["vs_primary"]
    assert not comparison["significant"] and body["verdict"]["winner"] is None
    more = comparison["more_per_variant"]
    assert more > 2000 and comparison["needed_per_variant"] == more + 2000
    assert (
        f"about {more:,} more labelled predictions per variant needed" in (body["verdict"]["text"])
    )


def test_several_challengers_share_alpha() -> None:
    rows = classifier_rows({1: (500, 400), 2: (500, 440), 3: (500, 400)})
    body = abtest.report(rows, "classifier", 1)
    assert [v["vs_primary"]["alpha"] for v in body["variants"][1:]] == [0.025, 0.025]


def test_regressor_mae_with_a_t_interval_and_welch_test() -> None:
    rng = np.random.default_rng(3)
    truth = rng.normal(150, 50, 600)
    noise = {1: rng.normal(0, 12, 600), 2: rng.normal(0, 9, 600)}
    labelled = [(v, float(t + e), float(t)) for v in (1, 2) for t, e in zip(truth, noise[v])]
    requests = [(v, 200, 3.0, 1) for v in (1, 2) for _ in range(600)]
    outputs = [(v, p, 1) for v, p, _ in labelled]
    body = abtest.report(WindowRows(requests, outputs, labelled, []), "regressor", 1)
    v1, v2 = body["variants"]
    errors = {v: np.abs(noise[v]) for v in (1, 2)}
    assert v1["feedback"]["metric"] == "mae"
    assert v1["feedback"]["value"] == pytest.approx(errors[1].mean())
    sem = errors[1].std(ddof=1) / math.sqrt(600)
    half = stats.t.ppf(0.975, 599) * sem
    assert v1["feedback"]["ci95"] == pytest.approx(
        [errors[1].mean() - half, errors[1].mean() + half]
    )
    welch = stats.ttest_ind(errors[2], errors[1], equal_var=False)
    assert v2["vs_primary"]["test"] == "Welch t-test on absolute errors"
    assert v2["vs_primary"]["p_value"] == pytest.approx(welch.pvalue)
    assert v2["vs_primary"]["statistic"] == pytest.approx(welch.statistic)
    assert body["verdict"]["winner"] == "v2" and "mae" in body["verdict"]["text"]
    assert set(v1["predictions"]) >= {"mean", "std", "p05", "p50", "p95"}


def test_regressor_with_the_same_errors_has_no_winner() -> None:
    rng = np.random.default_rng(5)
    truth = rng.normal(0, 1, 300)
    labelled = [(v, float(t + 0.5), float(t)) for v in (1, 2) for t in truth]
    requests = [(v, 200, 1.0, 1) for v in (1, 2) for _ in range(300)]
    body = abtest.report(WindowRows(requests, [], labelled, []), "regressor", 1)
    assert body["verdict"]["winner"] is None and "about zero" in body["verdict"]["text"]


def test_shadow_agreement_compares_rows_of_the_same_requests() -> None:
    pairs = [(3, '["a", "b"]', '["a", "c"]'), (3, '["a", "a"]', '["a", "a"]')]
    assert abtest.shadow_agreement(pairs, "classifier") == [
        {"version": 3, "requests": 2, "rows": 4, "agreement": 0.75}
    ]
    numbers = [(2, "[1.0, 2.0]", "[1.0, 2.5]")]
    assert abtest.shadow_agreement(numbers, "regressor") == [
        {"version": 2, "requests": 1, "rows": 2, "agreement": 0.5, "mean_abs_difference": 0.25}
    ]


@pytest.mark.parametrize(
    ("rows", "text"),
    [
        (WindowRows([], [], [], []), "no predictions"),
        (classifier_rows({1: (10, 9)}), "nothing to compare"),
        (classifier_rows({1: (0, 0), 2: (0, 0)}, requests=5), "not enough labelled"),
        (classifier_rows({1: (29, 0), 2: (29, 29)}), "not enough labelled"),
    ],
    ids=["no-traffic", "one-variant", "no-feedback", "too-few-labels"],
)
def test_verdict_says_why_it_cannot_decide(rows: WindowRows, text: str) -> None:
    body = abtest.report(rows, "classifier", 1)
    assert body["verdict"]["winner"] is None and text in body["verdict"]["text"]


# -- the report from the store ---------------------------------------------------------------


def write_synthetic(
    datastore: DataStore, spec: dict[int, tuple[int, int]], at: float = NOW - 60
) -> None:
    """{version: (labelled, correct)} predictions of iris/production, with their feedback."""
    recorder = SQLiteRecorder(datastore, flush_interval=3600)
    items = []
    for version, (n, correct) in spec.items():
        for i in range(n):
            rid = f"v{version}-{i}"
            recorder.record(
                PredictionRecord(
                    rid, at, "iris", version, "production", f"v{version}", 200, 1.0, 1,
                    [IRIS_ROW], np.array(["setosa"], dtype=object),
                )
            )  # fmt: skip
            items.append(Feedback(rid, "setosa" if i < correct else "virginica"))
    recorder.close()
    store_feedback(datastore, items, at)


def test_report_from_the_store_finds_the_truly_better_variant(
    split: ModelStore, datastore: DataStore
) -> None:
    write_synthetic(datastore, {1: (2000, 1600), 2: (2000, 1760)})
    write_synthetic(datastore, {1: (50, 0)}, at=NOW - 7200)  # outside the 1h window
    body = abtest.build_report(datastore, split, "iris", "production", 3600, NOW, "1h")
    assert ABReportSchema().validate(body) == {}
    assert (body["task"], body["primary"], body["window"]) == ("classifier", "v1", "1h")
    assert [v["requests"] for v in body["variants"]] == [2000, 2000]
    assert [v["feedback"]["labelled"] for v in body["variants"]] == [2000, 2000]
    assert body["variants"][0]["predictions"] == {"classes": [{"label": "setosa", "count": 2000}]}
    assert body["verdict"]["winner"] == "v2"


def test_report_from_the_store_with_no_difference_asks_for_more_data(
    split: ModelStore, datastore: DataStore
) -> None:
    write_synthetic(datastore, {1: (2000, 1600), 2: (2000, 1600)})
    body = abtest.build_report(datastore, split, "iris", "production", 3600, NOW)
    assert body["verdict"]["winner"] is None
    assert "no significant difference yet" in body["verdict"]["text"]


def test_ab_endpoint_reports_traffic_latency_and_shadow_agreement(
    split: ModelStore, make_app: Callable[..., Flask]
) -> None:
    split.shadow("iris", 1, actor="t")  # the primary's own version: it must agree
    client = make_app().test_client()
    served = [predict(client, f"user-{i}")["variant"] for i in range(40)]
    body = client.get("/v1/models/iris/ab?window=1h&alias=production").get_json()
    assert ABReportSchema().validate(body) == {}
    assert {v["variant"]: v["requests"] for v in body["variants"]} == {
        name: served.count(name) for name in set(served)
    }
    assert all(v["latency_ms"]["p50"] > 0 and v["error_rate"] == 0 for v in body["variants"])
    assert body["shadows"][0]["version"] == 1 and body["shadows"][0]["requests"] == 40
    v1_requests = served.count("v1")
    assert body["shadows"][0]["agreement"] >= v1_requests / 40


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/models/nope/ab", 404),
        ("/v1/models/iris/ab?window=soon", 422),
        ("/v1/models/iris/ab?window=400d", 422),
        ("/v1/models/iris/ab?alias=../x", 422),
        ("/v1/models/iris/ab?windows=1h", 422),
    ],
    ids=["unknown-model", "bad-window", "window-too-long", "bad-alias", "unknown-parameter"],
)
def test_ab_endpoint_errors(client: FlaskClient, path: str, status: int) -> None:
    response = client.get(path)
    assert response.status_code == status and "error" in response.get_json()


def test_openapi_documents_feedback_and_the_report(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    query = {p["name"] for p in paths["/v1/models/{name}/ab"]["get"]["parameters"]}
    assert query >= {"name", "alias", "window"}
    assert set(paths["/v1/feedback"]["post"]["responses"]) >= {"200", "422", "503"}


def test_cli_ab_reads_the_same_data_dir(
    app: Flask,
    split: ModelStore,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if settings.database_url:  # the command line reads the server's database
        monkeypatch.setenv("SERVING_DATABASE_URL", settings.database_url)
    client = app.test_client()
    ids = [predict(client, f"user-{i}")["request_id"] for i in range(10)]
    client.post(
        "/v1/feedback", json={"feedback": [{"request_id": i, "label": "setosa"} for i in ids]}
    )
    get_state(app).recorder.close()
    args = ["--store", split.location, "ab", "iris", "--data-dir", str(settings.data_dir)]
    assert main([*args, "--window", "1h"]) == 0
    table = capsys.readouterr().out
    assert "iris / production, last 1h" in table and "accuracy [95% CI]" in table
    assert "verdict:" in table
    assert main([*args, "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert sum(v["requests"] for v in body["variants"]) == 10
    assert main([*args, "--window", "forever"]) == 1
    assert "bad window" in capsys.readouterr().err


def test_report_reads_nothing_when_nothing_was_logged(split: ModelStore, tmp_path: Path) -> None:
    empty = DataStore(tmp_path / "never-written")
    body = abtest.build_report(empty, split, "iris", "production", 3600, time.time())
    assert body["variants"] == [] and not empty.data_dir.exists()


@pytest.mark.parametrize("database_url", [None], ids=["sqlite"])  # PostgreSQL: test_database
def test_an_unusable_data_dir_is_a_503_without_the_path(
    split: ModelStore, make_app: Callable[..., Flask], tmp_path: Path, database_url: None
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    client = make_app(data_dir=blocked / "data").test_client()
    assert predict(client, "a")["version"] in (1, 2)  # predictions still work
    response = client.post("/v1/feedback", json={"request_id": "x", "label": "setosa"})
    assert response.status_code == 503
    error = response.get_json()["error"]
    assert error["code"] == "data_store_unavailable" and str(tmp_path) not in error["message"]
    assert client.get("/v1/models/iris/ab").get_json()["variants"] == []  # nothing was logged


# -- who may send feedback, and what an overwrite says ---------------------------------------


@pytest.mark.parametrize("setting", ["feedback_token", "admin_token"])
def test_with_a_token_set_feedback_needs_it(
    split: ModelStore, make_app: Callable[..., Flask], setting: str
) -> None:
    client = make_app(**{setting: "s3cret"}).test_client()
    label = {"request_id": predict(client, "k")["request_id"], "label": "setosa"}
    missing = client.post("/v1/feedback", json=label)
    assert missing.status_code == 401 and "Bearer" in missing.headers["WWW-Authenticate"]
    wrong = client.post("/v1/feedback", json=label, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert wrong.get_json()["error"]["code"] == "forbidden"
    good = client.post("/v1/feedback", json=label, headers={"Authorization": "Bearer s3cret"})
    assert good.status_code == 200 and good.get_json()["accepted"] == 1


def test_either_token_is_accepted_when_both_are_set(
    split: ModelStore, make_app: Callable[..., Flask]
) -> None:
    client = make_app(feedback_token="labels", admin_token="admin").test_client()
    label = {"request_id": predict(client, "k")["request_id"], "label": "setosa"}
    for token in ("labels", "admin"):
        reply = client.post(
            "/v1/feedback", json=label, headers={"Authorization": f"Bearer {token}"}
        )
        assert reply.status_code == 200


def test_an_overwritten_label_is_counted_and_logged(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    request_id = predict(client, "k", rows=2)["request_id"]
    first = [{"request_id": request_id, "label": "setosa", "row": r} for r in range(2)]
    assert client.post("/v1/feedback", json={"feedback": first}).get_json()["overwritten"] == 0
    again = [{"request_id": request_id, "label": "virginica", "row": 1}]
    with caplog.at_level(logging.WARNING, logger="serving.telemetry.predlog"):
        reply = client.post("/v1/feedback", json={"feedback": again}).get_json()
    assert reply["accepted"] == 1 and reply["overwritten"] == 1
    assert any(getattr(r, "event", None) == "feedback_overwritten" for r in caplog.records)
