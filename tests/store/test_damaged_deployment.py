"""A damaged deployment.json is refused with its own error, and history still tells what the
last good deployment was (both backends)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.errors import DeploymentDamaged, StoreError
from serving.store.base import StoreBase
from serving.store.history import replay_deployment
from tests.store_damage import damage_deployment

DAMAGE = [
    b"",
    b'{"aliases": {"produc',
    b"[1, 2]",
    b'{"aliases": {"production": "two"}}',
    b'{"aliases": {"production": 1.5}}',
    b'{"aliases": {"production": true}}',
    b'{"aliases": {"production": 1}, "routes": {"production": "x"}}',
    b'{"aliases": {"production": 1}, "shadows": {"production": null}}',
    b'{"aliases": {"production": 1}, "routes": {"production": {"variants": [{"v": 1}]}}}',
]
IDS = ["empty", "truncated", "a list", "string", "fraction", "bool", "route", "shadow", "variant"]


@pytest.mark.parametrize("body", DAMAGE, ids=IDS)
def test_damaged_deployment_is_refused_as_deployment_damaged(
    store: StoreBase, iris_artifact: Path, body: bytes
) -> None:
    store.register("iris", iris_artifact, activate=True, actor="t")
    damage_deployment(store, "iris", body)
    with pytest.raises(DeploymentDamaged) as info:
        store.read_deployment("iris")
    assert isinstance(info.value, StoreError)  # existing callers still catch it
    assert info.value.status_code == 503
    assert info.value.to_dict()["error"]["code"] == "deployment_damaged"


def test_history_replays_to_the_deployment_it_recorded(
    store: StoreBase, iris_artifact: Path, iris_artifact_v2: Path
) -> None:
    store.register("iris", iris_artifact, activate=True, actor="t")
    store.register("iris", iris_artifact_v2, actor="t")
    store.register("iris", iris_artifact, actor="t")
    store.promote("iris", 2, actor="t")
    store.promote("iris", 3, alias="staging", actor="t")
    store.route("iris", {2: 90, 3: 10}, actor="t")
    store.shadow("iris", 1, alias="staging", actor="t")
    store.rollback("iris", actor="t")  # ends the split: production back to 2
    good = store.read_deployment("iris")
    replayed = replay_deployment(store.history("iris"))
    assert replayed is not None
    assert replayed["aliases"] == good["aliases"] == {"production": 2, "staging": 3}
    assert replayed["shadows"] == good["shadows"] == {"staging": 1}
    assert replayed["routes"] == good.get("routes", {}) == {}


def test_history_of_a_never_deployed_model_replays_to_nothing(
    store: StoreBase, iris_artifact: Path
) -> None:
    store.register("iris", iris_artifact, actor="t")
    assert replay_deployment(store.history("iris")) is None
