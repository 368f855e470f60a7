"""Reference statistics stored with a version: the baseline for drift monitoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.store.model_store import ModelStore
from serving.store.reference import numeric_histogram


def test_numeric_features_get_quantile_bins_that_sum_to_one(
    store: ModelStore, iris_artifact: Path, iris_reference: Path
) -> None:
    store.register("iris", iris_artifact, iris_reference, actor="t")
    stats = store.read_metadata("iris", 1)["reference_stats"]
    assert stats["rows"] == 150
    petal = stats["features"]["petal length (cm)"]
    assert petal["kind"] == "numeric" and len(petal["proportions"]) == len(petal["edges"]) + 1
    assert sum(petal["proportions"]) == pytest.approx(1.0)
    assert petal["min"] == 1.0 and petal["max"] == 6.9 and petal["missing_rate"] == 0.0
    assert set(stats["prediction"]["proportions"]) == {"setosa", "versicolor", "virginica"}
    assert sum(stats["confidence"]["proportions"]) == pytest.approx(1.0)


def test_categorical_features_get_frequencies(
    store: ModelStore, mixed_artifact: tuple[Path, Path]
) -> None:
    store.register("churn", mixed_artifact[0], mixed_artifact[1], actor="t")
    city = store.read_metadata("churn", 1)["reference_stats"]["features"]["city"]
    assert city["kind"] == "categorical"
    assert set(city["frequencies"]) == {"paris", "lyon", "nice"}
    assert sum(city["frequencies"].values()) + city["other"] == pytest.approx(1.0)


def test_regressor_prediction_distribution(
    store: ModelStore, regressor_artifact: Path, tmp_path: Path
) -> None:
    from sklearn.datasets import load_diabetes

    csv = tmp_path / "diabetes.csv"
    load_diabetes(as_frame=True).data.to_csv(csv, index=False)
    store.register("diabetes", regressor_artifact, csv, actor="t")
    prediction = store.read_metadata("diabetes", 1)["reference_stats"]["prediction"]
    assert prediction["kind"] == "numeric" and prediction["std"] > 0


def test_without_reference_data_stats_say_so(store: ModelStore, iris_artifact: Path) -> None:
    store.register("iris", iris_artifact, actor="t")
    assert store.read_metadata("iris", 1)["reference_stats"] is None


def test_histogram_puts_out_of_range_values_in_the_edge_bins() -> None:
    counts = numeric_histogram(np.array([-100.0, 0.5, 1.5, 2.5, 100.0]), [1.0, 2.0])
    assert counts == [2, 1, 2]
