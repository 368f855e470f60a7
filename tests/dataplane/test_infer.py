"""The dataplane without Flask: routing (variant, sticky key, shadow), infer, the shadow's copy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from serving import dataplane
from serving.errors import InvalidInput, ModelNotFound
from serving.runtime.loader import ModelLoader
from serving.store.model_store import ModelStore
from serving.telemetry.metrics import Metrics
from serving.telemetry.recorder import PredictionRecord, Recorder
from tests.conftest import IRIS_ROW


class Recording(Recorder):
    def __init__(self) -> None:
        self.records: list[PredictionRecord] = []

    def record(self, record: PredictionRecord) -> None:
        self.records.append(record)


@pytest.fixture
def loader(store: ModelStore, iris_artifact: Path, iris_artifact_v2: Path) -> Iterator[ModelLoader]:
    """iris v1 and v2 split 50/50 (sticky) on production, v1 shadowing it."""
    store.register("iris", iris_artifact, activate=True, actor="t")
    store.register("iris", iris_artifact_v2, actor="t")
    store.route("iris", {1: 50, 2: 50}, sticky=True, actor="t")
    store.shadow("iris", 1, actor="t")
    loader = ModelLoader(store, Metrics())
    loader.refresh()
    yield loader
    loader.stop_polling()


def test_split_alias_names_the_variant_of_the_version_it_chose(loader: ModelLoader) -> None:
    outcomes = [dataplane.route(loader, "iris", key=f"user-{i}") for i in range(100)]
    assert {o.version for o in outcomes} == {1, 2}
    assert all(o.variant == f"v{o.version}" and o.alias == "production" for o in outcomes)


def test_same_routing_key_always_gets_the_same_version(loader: ModelLoader) -> None:
    for i in range(50):
        versions = {dataplane.route(loader, "iris", key=f"user-{i}").version for _ in range(10)}
        assert len(versions) == 1


def test_alias_shadow_is_part_of_the_outcome(loader: ModelLoader) -> None:
    outcome = dataplane.route(loader, "iris", key="a")
    assert outcome.shadow is not None and outcome.shadow.version == 1


def test_pinned_version_has_no_alias_variant_or_shadow(loader: ModelLoader) -> None:
    outcome = dataplane.route(loader, "iris", version=2, key="a")
    assert (outcome.version, outcome.alias, outcome.variant, outcome.shadow) == (
        2,
        None,
        None,
        None,
    )


def test_unknown_model_is_not_found(loader: ModelLoader) -> None:
    with pytest.raises(ModelNotFound):
        dataplane.route(loader, "nope", key="a")


@pytest.mark.parametrize(
    "rows",
    [
        dataplane.Rows(instances=[IRIS_ROW, IRIS_ROW]),
        dataplane.Rows(array=np.array([IRIS_ROW, IRIS_ROW])),
    ],
    ids=["instances", "array"],
)
def test_infer_predicts_with_the_routed_version_and_keeps_its_result(
    loader: ModelLoader, rows: dataplane.Rows
) -> None:
    outcome = dataplane.route(loader, "iris", key="user-7")
    result = dataplane.infer(outcome, rows, return_proba=True, max_instances=10)
    assert outcome.result is result and outcome.rows is rows
    assert (result.model, result.version, result.rows) == ("iris", outcome.version, 2)
    assert result.probabilities is not None and result.probabilities.shape == (2, 3)
    assert outcome.inputs == rows.instances  # arrays are not kept for the prediction log


def test_refused_rows_leave_a_routed_outcome_without_result(loader: ModelLoader) -> None:
    outcome = dataplane.route(loader, "iris", key="a")
    with pytest.raises(InvalidInput, match="too many instances"):
        dataplane.infer(outcome, dataplane.Rows(instances=[IRIS_ROW] * 3), max_instances=2)
    assert outcome.result is None and outcome.version in (1, 2)


def test_shadow_task_scores_the_same_rows_and_records_a_shadow_row(loader: ModelLoader) -> None:
    outcome = dataplane.route(loader, "iris", key="user-1")
    dataplane.infer(outcome, dataplane.Rows(array=np.array([IRIS_ROW])))
    recorder = Recording()
    task = dataplane.shadow_task(outcome, "req-1", recorder, max_instances=10)
    assert task is not None and recorder.records == []  # bound now, run later
    task()
    (record,) = recorder.records
    assert (record.request_id, record.version, record.shadow) == ("req-1", 1, True)
    assert (record.alias, record.variant, record.rows) == ("production", "shadow", 1)


def test_no_shadow_task_before_a_result_or_for_a_pinned_version(loader: ModelLoader) -> None:
    routed = dataplane.route(loader, "iris", key="a")
    assert dataplane.shadow_task(routed, "r", Recording(), None) is None  # nothing predicted
    pinned = dataplane.route(loader, "iris", version=2)
    dataplane.infer(pinned, dataplane.Rows(instances=[IRIS_ROW]))
    assert dataplane.shadow_task(pinned, "r", Recording(), None) is None
