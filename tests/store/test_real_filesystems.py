"""The local store on real filesystems: a small tmpfs that fills (a register fails cleanly,
nothing half-written, and works again once space returns) and a read-only mount (every write
refused in our error shape, predictions and readiness unaffected). Mounting needs root."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from serving.errors import StoreError
from serving.store.model_store import ModelStore
from tests.conftest import IRIS_ROW
from tests.mounts import fill, read_only, tmpfs


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_register_on_a_full_filesystem_fails_cleanly_and_works_once_space_returns(
    tmp_path: Path, iris_artifact: Path
) -> None:
    with tmpfs(tmp_path / "small", "2m") as mount:
        store = ModelStore(mount / "store")
        assert store.register("iris", iris_artifact, activate=True, actor="t") == 1
        filler = fill(mount)
        before = _tree(Path(store.location))
        with pytest.raises(StoreError, match="could not write version 2"):
            store.register("iris", iris_artifact, actor="t")
        with pytest.raises(StoreError):
            store.register("other", iris_artifact, actor="t")
        assert store.list_models() == ["iris"] and store.versions("iris") == [1]
        after = _tree(Path(store.location))
        assert {k: v for k, v in after.items() if k in before} == before  # nothing rewritten
        filler.unlink()
        assert store.register("iris", iris_artifact, actor="t") == 2


def test_a_read_only_store_serves_and_refuses_every_write_in_our_error_shape(
    tmp_path: Path,
    iris_artifact: Path,
    make_app: Callable[..., Flask],
) -> None:
    writable = ModelStore(tmp_path / "rw")
    writable.register("iris", iris_artifact, activate=True, actor="t")
    writable.register("iris", iris_artifact, actor="t")
    with read_only(writable.location, tmp_path / "ro") as mount:
        store = ModelStore(mount)
        with pytest.raises(StoreError):
            store.promote("iris", 2, actor="t")  # StoreReadOnly
        with pytest.raises(StoreError):
            store.register("iris", iris_artifact, actor="t")
        app = make_app(model_store=mount, admin_token="secret")
        client = app.test_client()
        assert client.get("/health/ready").status_code == 200
        reply = client.post("/v1/models/iris/predict", json={"instances": [IRIS_ROW]})
        assert reply.status_code == 200 and reply.get_json()["version"] == 1
        promote = client.post(
            "/v1/admin/models/iris/promote",
            json={"version": 2},
            headers={"Authorization": "Bearer secret"},
        )
        assert promote.status_code == 503, promote.data
        assert promote.get_json()["error"]["code"] == "store_read_only"
        deployment = json.loads((mount / "iris" / "deployment.json").read_bytes())
        assert deployment["aliases"] == {"production": 1}
