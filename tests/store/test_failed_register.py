"""A register that fails (a full store, a model that cannot be probed) leaves nothing that
`models list` or `models show` would call a model (both backends)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from serving.cli.main import main
from serving.errors import StoreError
from serving.store.base import StoreBase
from serving.store.model_store import ModelStore


def _fill_up(store: StoreBase, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every artifact write fails as on a full disk (or a bucket over its quota)."""
    if isinstance(store, ModelStore):

        def full(*_: Any, **__: Any) -> Any:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr("serving.store.model_store.copy_with_sha256", full)
        return
    from boto3.exceptions import S3UploadFailedError

    def refused(*_: Any, **__: Any) -> None:
        raise S3UploadFailedError("QuotaExceeded: the bucket is full")

    monkeypatch.setattr(store.client, "upload_file", refused)


def test_register_on_a_full_store_leaves_no_model(
    store: StoreBase, iris_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill_up(store, monkeypatch)
    with pytest.raises(StoreError, match="could not write version 1"):
        store.register("iris", iris_artifact, activate=True, actor="t")
    assert store.list_models() == []
    assert not store.exists("iris")
    monkeypatch.undo()
    assert store.register("iris", iris_artifact, actor="t") == 1  # the number is not lost
    assert store.list_models() == ["iris"]


def test_failed_register_of_a_second_model_leaves_the_first_alone(
    store: StoreBase, iris_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.register("iris", iris_artifact, actor="t")
    _fill_up(store, monkeypatch)
    with pytest.raises(StoreError):
        store.register("other", iris_artifact, actor="t")
    with pytest.raises(StoreError):
        store.register("iris", iris_artifact, actor="t")
    assert store.list_models() == ["iris"]
    assert store.versions("iris") == [1]


def test_models_list_after_a_register_that_cannot_probe_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import joblib

    root = tmp_path / "store"
    ModelStore(root).root.mkdir(parents=True)
    (root / "leftover").mkdir()  # what an older, failed register left: its lock file only
    (root / "leftover" / ".lock").write_bytes(b"")
    bogus = tmp_path / "bogus.joblib"
    joblib.dump({"not": "a model"}, bogus)
    assert main(["--store", str(root), "models", "register", "bogus", str(bogus)]) == 1
    capsys.readouterr()
    assert main(["--store", str(root), "models", "list"]) == 0
    listing = capsys.readouterr().out
    assert "bogus" not in listing and "leftover" not in listing
