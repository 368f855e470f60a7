"""Who registered or promoted (`created_by`, `actor`: user@host) is recorded only when asked
and, once an admin token is set, shown to the admin only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from serving.cli.main import main
from serving.settings import Settings
from serving.store.model_store import ModelStore, default_actor
from serving.store.open import store_from_settings

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_version_metadata_names_its_creator_to_the_admin_only(
    served: ModelStore, make_app: Callable[..., Flask]
) -> None:
    client = make_app(admin_token=TOKEN).test_client()
    anonymous = client.get("/v1/models/iris/versions/1")
    assert anonymous.status_code == 200 and "created_by" not in anonymous.json
    wrong = client.get("/v1/models/iris/versions/1", headers={"Authorization": "Bearer nope"})
    assert "created_by" not in wrong.json
    admin = client.get("/v1/models/iris/versions/1", headers=AUTH)
    assert admin.json["created_by"] == "test"


def test_without_an_admin_token_metadata_is_as_recorded(
    served: ModelStore, make_app: Callable[..., Flask]
) -> None:
    client = make_app().test_client()
    assert client.get("/v1/models/iris/versions/1").json["created_by"] == "test"


def test_dashboard_swaps_name_the_actor_to_the_admin_only(
    served: ModelStore, make_app: Callable[..., Flask]
) -> None:
    served.promote("iris", 1, alias="staging", actor="alice@laptop")
    client = make_app(admin_token=TOKEN).test_client()
    anonymous = client.get("/v1/dashboard/data").json["swaps"]
    assert anonymous and all("actor" not in swap for swap in anonymous)
    assert "alice@laptop" not in client.get("/v1/dashboard/data").get_data(as_text=True)
    admin = client.get("/v1/dashboard/data", headers=AUTH).json["swaps"]
    assert {swap["actor"] for swap in admin} >= {"alice@laptop"}


def test_created_by_can_be_left_out_per_register_or_by_setting(
    tmp_path: Path, iris_artifact: Path
) -> None:
    store = ModelStore(tmp_path / "store")
    store.register("iris", iris_artifact, actor="t")
    assert store.read_metadata("iris", 1)["created_by"] == "t"
    store.register("iris", iris_artifact, actor="t", created_by=False)
    assert "created_by" not in store.read_metadata("iris", 2)
    settings = Settings.from_env({"SERVING_MODEL_STORE": str(tmp_path / "store"),
                                  "SERVING_RECORD_CREATED_BY": "false"})  # fmt: skip
    quiet = store_from_settings(settings)
    quiet.register("iris", iris_artifact)
    assert "created_by" not in quiet.read_metadata("iris", 3)
    assert Settings.from_env({}).record_created_by is True


def test_register_no_created_by_flag(
    tmp_path: Path, iris_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "store"
    assert main(["--store", str(root), "models", "register", "iris", str(iris_artifact)]) == 0
    args = ["--store", str(root), "models", "register", "iris", str(iris_artifact)]
    assert main([*args, "--no-created-by"]) == 0
    store = ModelStore(root)
    assert store.read_metadata("iris", 1)["created_by"] == default_actor()
    assert "created_by" not in store.read_metadata("iris", 2)
