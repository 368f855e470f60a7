"""The optional per-worker prediction cache: LRU, keys, invalidation, metrics, X-Cache."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from serving.api.state import get_state
from serving.errors import ConfigError
from serving.runtime.cache import MAX_ROWS, PredictionCache, make_key
from serving.runtime.loader import ModelLoader
from serving.runtime.predict import PredictionResult, predict
from serving.settings import Settings
from serving.store.model_store import ModelStore
from serving.telemetry.metrics import Metrics
from tests.conftest import IRIS_ROW
from tests.telemetry.test_prometheus import samples_of, value

OTHER_ROW = [6.7, 3.0, 5.2, 2.3]


class Counting(Metrics):
    def __init__(self) -> None:
        self.lookups: list[tuple[str, bool]] = []

    def cache(self, model: str, hit: bool) -> None:
        self.lookups.append((model, hit))


def _result(label: str) -> PredictionResult:
    return PredictionResult("m", 1, np.array([label]), None, None, 1)


def _key(i: int) -> tuple[str, int, bool, int]:
    return ("m", 1, False, i)


# -- the LRU and its keys ------------------------------------------------------------------


def test_the_least_recently_used_entry_goes_first() -> None:
    cache = PredictionCache(2)
    cache.put(_key(1), _result("a"))
    cache.put(_key(2), _result("b"))
    assert cache.get(_key(1)) is not None  # 1 is now the most recent
    cache.put(_key(3), _result("c"))
    assert len(cache) == 2
    assert cache.get(_key(2)) is None
    assert cache.get(_key(1)) is not None and cache.get(_key(3)) is not None


def test_the_key_holds_model_version_proba_flag_and_the_validated_values() -> None:
    x = np.array([IRIS_ROW])
    base = make_key("iris", 1, x, False)
    assert base == make_key("iris", 1, x.copy(), False)
    assert base != make_key("iris", 2, x, False)
    assert base != make_key("iris", 1, x, True)
    assert base != make_key("other", 1, x, False)
    assert base != make_key("iris", 1, np.array([OTHER_ROW]), False)
    assert base != make_key("iris", 1, np.array([IRIS_ROW, IRIS_ROW]), False)


@pytest.mark.parametrize(
    "features",
    [np.zeros((MAX_ROWS + 1, 2)), np.zeros((10, 1000)), np.zeros(4)],
    ids=["too-many-rows", "too-many-bytes", "not-2-d"],
)
def test_big_or_odd_inputs_are_not_cached(features: np.ndarray) -> None:
    assert make_key("m", 1, features, False) is None


def test_cached_arrays_are_read_only() -> None:
    cache = PredictionCache(4)
    result = _result("a")
    cache.put(_key(1), result)
    with pytest.raises(ValueError, match="read-only"):
        result.predictions[0] = "b"


def test_retain_drops_the_entries_of_other_versions() -> None:
    cache = PredictionCache(8)
    for version in (1, 2, 3):
        cache.put(("m", version, False, b""), _result("a"))
    assert cache.retain({("m", 2)}) == 2
    assert len(cache) == 1 and cache.get(("m", 2, False, b"")) is not None


def test_concurrent_threads_keep_the_bound_and_the_right_answers() -> None:
    cache = PredictionCache(16)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(2000):
                i = int(rng.integers(64))
                stored = cache.get(_key(i))
                if stored is None:
                    cache.put(_key(i), _result(str(i)))
                elif stored.predictions[0] != str(i):
                    raise AssertionError(f"key {i} answered {stored.predictions[0]}")
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(cache) <= 16


# -- settings ----------------------------------------------------------------------------------


def test_the_cache_is_off_by_default_and_read_from_the_environment() -> None:
    assert Settings().prediction_cache == 0
    assert Settings.from_env({}).prediction_cache == 0
    assert Settings.from_env({"SERVING_PREDICTION_CACHE": "500"}).prediction_cache == 500
    with pytest.raises(ConfigError, match="SERVING_PREDICTION_CACHE"):
        Settings.from_env({"SERVING_PREDICTION_CACHE": "-1"})


def test_with_the_cache_off_responses_carry_no_x_cache(client: FlaskClient) -> None:
    for _ in range(2):
        response = client.post("/v1/models/iris/predict", json={"instances": [IRIS_ROW]})
        assert response.status_code == 200 and "X-Cache" not in response.headers


# -- through the app -------------------------------------------------------------------------


@pytest.fixture
def cached(served: ModelStore, make_app: Callable[..., Flask]) -> Flask:
    return make_app(prediction_cache=100)


def _post(client: FlaskClient, rows: list[list[float]], proba: bool = False) -> tuple[str, dict]:
    response = client.post(
        "/v1/models/iris/predict", json={"instances": rows, "return_proba": proba}
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    body.pop("request_id")
    return response.headers["X-Cache"], body


def _lookups(client: FlaskClient, result: str, model: str = "iris") -> float:
    samples = samples_of(client.get("/metrics").get_data(as_text=True))
    found = value(samples, "serving_prediction_cache_lookups_total", model=model, result=result)
    return found or 0.0


def test_a_repeated_request_hits_with_the_same_answer(cached: Flask) -> None:
    client = cached.test_client()
    first = _post(client, [IRIS_ROW, OTHER_ROW], proba=True)
    second = _post(client, [IRIS_ROW, OTHER_ROW], proba=True)
    assert first[0] == "miss" and second[0] == "hit"
    assert second[1] == first[1]
    assert _post(client, [IRIS_ROW, OTHER_ROW])[0] == "miss"  # without probabilities
    assert _post(client, [[5.1, 3.5, 1.4, 0.2], OTHER_ROW])[0] == "hit"  # same values
    assert _lookups(client, "hit") == 2 and _lookups(client, "miss") == 2


def test_a_promote_misses_and_a_rollback_finds_the_held_versions_answers(
    cached: Flask, served: ModelStore, iris_artifact_v2: Path
) -> None:
    client = cached.test_client()
    assert _post(client, [IRIS_ROW])[0] == "miss"
    status, first = _post(client, [IRIS_ROW])
    assert status == "hit" and first["version"] == 1
    served.register("iris", iris_artifact_v2, actor="test")
    served.promote("iris", 2, actor="test")
    get_state(cached).loader.refresh()
    status, body = _post(client, [IRIS_ROW])
    assert status == "miss" and body["version"] == 2
    served.rollback("iris", actor="test")
    get_state(cached).loader.refresh()
    status, body = _post(client, [IRIS_ROW])
    # v1 stayed in the worker's pinned LRU, and so did its answers (the key holds the version)
    assert (status, body) == ("hit", first)


def test_refused_input_is_never_cached(
    store: ModelStore, mixed_artifact: tuple[Path, Path], make_app: Callable[..., Flask]
) -> None:
    artifact, reference = mixed_artifact
    store.register("churn", artifact, reference, activate=True, actor="test")
    client = make_app(prediction_cache=10).test_client()
    good = {"age": 30.0, "income": 60000.0, "city": "paris", "plan": "pro"}
    bad = {**good, "city": "atlantis"}
    for _ in range(2):
        response = client.post("/v1/models/churn/predict", json={"instances": [bad]})
        assert response.status_code == 422 and "X-Cache" not in response.headers
    assert _lookups(client, "hit", "churn") == 0 and _lookups(client, "miss", "churn") == 2
    statuses = [
        client.post("/v1/models/churn/predict", json={"instances": [good]}).headers["X-Cache"]
        for _ in range(2)
    ]
    assert statuses == ["miss", "hit"]  # categorical (DataFrame) inputs are cached too


def test_every_front_door_shares_the_cache(cached: Flask) -> None:
    client = cached.test_client()
    assert _post(client, [IRIS_ROW])[0] == "miss"
    body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": IRIS_ROW}]}
    response = client.post("/v2/models/iris/infer", json=body)
    assert response.status_code == 200 and response.headers["X-Cache"] == "hit"


@pytest.mark.parametrize("pinned", [0, 2])
def test_a_loader_with_a_cache_hands_it_to_the_versions_it_loads(
    served: ModelStore, iris_artifact_v2: Path, pinned: int
) -> None:
    metrics = Counting()
    cache = PredictionCache(10, metrics)
    loader = ModelLoader(
        served, Metrics(), array_input=False, cache=cache, pinned_cache_size=pinned
    )
    loader.refresh()
    loaded = loader.resolve("iris")
    assert [predict(loaded, [IRIS_ROW]).cache for _ in range(2)] == ["miss", "hit"]
    assert metrics.lookups == [("iris", False), ("iris", True)]
    served.register("iris", iris_artifact_v2, actor="test")
    served.promote("iris", 2, actor="test")
    loader.refresh()
    # v1's answers stay while the worker holds v1 for a rollback, and go with it
    assert len(cache) == (1 if pinned else 0)


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    yield sock
    sock.close()


def test_hits_and_misses_go_to_statsd(
    served: ModelStore, make_app: Callable[..., Flask], udp: socket.socket
) -> None:
    port = udp.getsockname()[1]
    app = make_app(statsd_host="127.0.0.1", statsd_port=port, statsd_prefix="t", prediction_cache=5)
    client = app.test_client()
    for _ in range(2):
        client.post("/v1/models/iris/predict", json={"instances": [IRIS_ROW]})
    seen: set[str] = set()
    while not {"t.cache.iris.miss:1|c", "t.cache.iris.hit:1|c"} <= seen:
        try:
            seen.update(udp.recv(65536).decode().splitlines())
        except TimeoutError:
            break
    assert {"t.cache.iris.miss:1|c", "t.cache.iris.hit:1|c"} <= seen
