"""The object-store backend against a real S3 API (SeaweedFS): what only a bucket can get wrong.

Write-once versions and compare-and-swap deployments under concurrent writers, conditional
polls, one download per machine, a tampered object, an unreachable store, and copying a whole
store between backends.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from pathlib import Path

import boto3
import pytest

from serving.cli.main import main
from serving.errors import VersionNotFound
from serving.runtime.loader import ModelLoader
from serving.store.copy import copy_store
from serving.store.model_store import ModelStore
from serving.store.s3_client import S3Location
from serving.store.s3_store import S3Store
from serving.telemetry.metrics import Metrics


class CountingMetrics(Metrics):
    def __init__(self) -> None:
        self.unavailable: list[str] = []
        self.swaps: list[tuple[str, bool]] = []

    def store_unavailable(self, operation: str) -> None:
        self.unavailable.append(operation)

    def swap(self, model: str, ok: bool) -> None:
        self.swaps.append((model, ok))


def _calls(store: S3Store) -> Counter[str]:
    """Every S3 operation `store`'s client makes from now on, by name."""
    seen: Counter[str] = Counter()
    store.client.meta.events.register(
        "before-call.s3.*", lambda model, **_: seen.update([model.name])
    )
    return seen


def _raw(url: str) -> tuple[object, S3Location]:
    return boto3.client("s3"), S3Location.parse(url)


def _unreachable(store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the store's next client at a closed port: a real connection refused."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    store._client_pid = -1  # the client is remade on next use, from the environment


def test_concurrent_promotes_lose_no_change(s3_url: str, tmp_path: Path, iris_artifact: Path):
    setup = S3Store(s3_url, tmp_path / "setup")
    for _ in range(3):
        setup.register("iris", iris_artifact, actor="t")
    errors: list[Exception] = []

    def promote_pair(index: int) -> None:  # each thread a machine with its own store object
        store = S3Store(s3_url, tmp_path / f"m{index}")
        try:
            store.promote("iris", 1 + index % 3, actor=f"a{index}")
            store.promote("iris", 1 + (index + 1) % 3, alias="canary", actor=f"b{index}")
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=promote_pair, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    deployment = setup.read_deployment("iris")
    assert deployment["revision"] == 40
    changes = [e for e in setup.history("iris") if e["action"] == "promote"]
    assert len(changes) == 40
    assert sorted(e["revision"] for e in changes) == list(range(1, 41))
    assert {e["actor"] for e in changes} == {f"{p}{i}" for p in "ab" for i in range(20)}
    last = {e["alias"]: e["version"] for e in sorted(changes, key=lambda e: e["revision"])}
    assert deployment["aliases"] == last  # the document is the last accepted change


def test_a_half_uploaded_version_is_never_visible(
    s3_url: str, tmp_path: Path, iris_artifact: Path
) -> None:
    store = S3Store(s3_url, tmp_path / "cache")
    store.register("iris", iris_artifact, activate=True, actor="t")
    client, where = _raw(s3_url)
    # A register that died after claiming version 2 and uploading its artifact:
    client.put_object(Bucket=where.bucket, Key=where.key("iris", "2", ".claim"), Body=b"")
    client.put_object(Bucket=where.bucket, Key=where.key("iris", "2", "model.joblib"), Body=b"x")
    assert store.versions("iris") == [1]
    with pytest.raises(VersionNotFound, match="no version 2"):
        store.promote("iris", 2, actor="t")
    assert store.register("iris", iris_artifact, actor="t") == 3  # the number is not reused
    assert store.versions("iris") == [1, 3]


def test_an_idle_worker_polls_with_one_conditional_get_and_never_lists(
    s3_url: str, tmp_path: Path, iris_artifact: Path
) -> None:
    S3Store(s3_url, tmp_path / "w").register("iris", iris_artifact, activate=True, actor="t")
    store = S3Store(s3_url, tmp_path / "cache")
    now = [0.0]
    loader = ModelLoader(store, Metrics(), poll_interval=1.0, clock=lambda: now[0])
    loader.refresh()
    state = loader.states()["iris"]
    calls = _calls(store)
    for _ in range(8):  # eight polls, eight seconds: under the listing interval
        now[0] += 1.0
        assert loader.maybe_refresh()
    assert calls == Counter({"GetObject": 8})
    assert loader.states()["iris"] is state  # a 304 changes nothing: no reload
    now[0] += store.list_interval
    loader.maybe_refresh()
    assert calls["ListObjectsV2"] == 1


def test_a_machine_downloads_a_version_once_for_all_its_workers(
    s3_url: str, tmp_path: Path, forest_artifact: Path
) -> None:
    S3Store(s3_url, tmp_path / "w").register("forest", forest_artifact, activate=True, actor="t")
    workers = [S3Store(s3_url, tmp_path / "cache") for _ in range(4)]
    counts = [_calls(w) for w in workers]
    threads = [threading.Thread(target=w.version_dir, args=("forest", 1)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    artifact_gets = sum(c["HeadObject"] for c in counts)  # download_file starts with a HEAD
    assert artifact_gets == 1, counts
    folder = workers[0].version_dir("forest", 1)
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "model.joblib"]


def test_a_tampered_artifact_is_refused_and_the_old_version_keeps_serving(
    s3_url: str, tmp_path: Path, iris_artifact: Path, iris_artifact_v2: Path
) -> None:
    admin = S3Store(s3_url, tmp_path / "admin")
    admin.register("iris", iris_artifact, activate=True, actor="t")
    admin.register("iris", iris_artifact_v2, actor="t")
    client, where = _raw(s3_url)
    key = where.key("iris", "2", "model.joblib")
    client.put_object(Bucket=where.bucket, Key=key, Body=iris_artifact.read_bytes())
    metrics = CountingMetrics()
    worker = S3Store(s3_url, tmp_path / "cache")
    loader = ModelLoader(worker, metrics)
    loader.refresh()
    admin.promote("iris", 2, actor="t")
    loader.refresh()
    assert loader.resolve("iris").version == 1
    problem = loader.states()["iris"].problems["production"]
    assert "sha256" in problem and "changed after publishing" in problem, problem
    assert worker.cache.cached("iris", 2) is None  # nothing bad left in the cache
    assert ("iris", False) in metrics.swaps


def test_an_unreachable_store_changes_nothing_and_polls_back_off(
    s3_url: str, tmp_path: Path, iris_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = S3Store(s3_url, tmp_path / "admin")
    admin.register("iris", iris_artifact, activate=True, actor="t")
    admin.register("iris", iris_artifact, actor="t")
    metrics = CountingMetrics()
    worker = S3Store(s3_url, tmp_path / "cache", serve_cached=True)
    loader = ModelLoader(worker, metrics, poll_interval=0.5)
    loader.refresh()
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    _unreachable(worker, monkeypatch)
    for _ in range(3):
        loader.refresh()
    assert loader.resolve("iris").version == 1
    assert loader.ready() == (True, {})
    assert metrics.unavailable == ["poll"] * 3
    assert loader.next_poll_in() == 4.0  # 0.5 s doubled per failed poll
    admin.promote("iris", 2, actor="t")  # made while this worker could not see the store
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    worker._client_pid = -1
    loader.refresh()
    assert loader.resolve("iris").version == 2
    assert loader.next_poll_in() == 0.5


def test_a_replica_started_in_an_outage_serves_what_its_machine_cached(
    s3_url: str, tmp_path: Path, iris_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = S3Store(s3_url, tmp_path / "admin")
    admin.register("iris", iris_artifact, activate=True, actor="t")
    admin.register("diabetes", iris_artifact, activate=True, actor="t")
    first = S3Store(s3_url, tmp_path / "cache", serve_cached=True)
    ModelLoader(first, Metrics()).refresh()  # caches both deployments and both versions
    admin.register("iris", iris_artifact, actor="t")
    admin.promote("iris", 2, alias="canary", actor="t")
    ModelLoader(S3Store(s3_url, tmp_path / "cache", serve_cached=True), Metrics()).refresh()
    # ...v2's download done by then; now diabetes's files are lost from this machine's cache
    import shutil

    shutil.rmtree(first.cache.folder("diabetes", 1))
    late = S3Store(s3_url, tmp_path / "cache", serve_cached=True)
    _unreachable(late, monkeypatch)
    loader = ModelLoader(late, CountingMetrics())
    loader.refresh()
    assert loader.resolve("iris").version == 1
    assert loader.resolve("iris", "canary").version == 2
    ready, waiting = loader.ready()
    assert not ready and list(waiting) == ["diabetes:production"]
    assert "unreachable" in waiting["diabetes:production"]


def test_the_cache_evicts_unreferenced_versions_beyond_its_bound(
    s3_url: str, tmp_path: Path, iris_artifact: Path, iris_artifact_v2: Path
) -> None:
    admin = S3Store(s3_url, tmp_path / "admin")
    for artifact in (iris_artifact, iris_artifact_v2, iris_artifact):
        admin.register("iris", artifact, actor="t")
    admin.promote("iris", 3, actor="t")
    worker = S3Store(s3_url, tmp_path / "cache")
    folders = [worker.version_dir("iris", version) for version in (1, 2, 3)]
    worker.cache.max_bytes = sum(f.stat().st_size for p in folders[1:] for f in p.iterdir())
    worker.deployment_signature("iris")  # the machine has seen the deployment: 3 serves
    worker.prune_cache(set())
    left = sorted(p.name for p in folders[0].parent.iterdir() if p.name.isdigit())
    assert left == ["2", "3"]  # the oldest unreferenced went; 3 is production


def test_store_copy_moves_a_local_store_up_and_back_down(
    s3_url: str, tmp_path: Path, iris_artifact: Path, iris_artifact_v2: Path
) -> None:
    local = ModelStore(tmp_path / "local")
    local.register("iris", iris_artifact, activate=True, actor="t")
    local.register("iris", iris_artifact_v2, actor="t")
    local.promote("iris", 2, alias="canary", actor="t")
    assert main(["store", "copy", str(local.root), s3_url]) == 0
    remote = S3Store(s3_url, tmp_path / "cache")
    assert remote.versions("iris") == [1, 2]
    assert remote.read_deployment("iris")["aliases"] == {"production": 1, "canary": 2}
    assert [e["action"] for e in remote.history("iris")] == [
        e["action"] for e in local.history("iris")
    ]
    assert main(["store", "copy", str(local.root), s3_url]) == 0  # again: nothing to do
    back = tmp_path / "back"
    summary = copy_store(remote, ModelStore(back))
    assert (summary.copied, summary.skipped) == (2, 0)
    assert json.loads((back / "iris" / "deployment.json").read_text())["aliases"] == {
        "production": 1,
        "canary": 2,
    }
    assert (back / "iris" / "2" / "model.joblib").read_bytes() == iris_artifact_v2.read_bytes()
    remote.promote("iris", 2, actor="t")  # the copied deployment and history carry on
    assert remote.rollback("iris", actor="t") == 1
    assert [e["action"] for e in remote.history("iris")][-2:] == ["promote", "rollback"]


def test_every_cli_verb_works_on_a_bucket(
    s3_url: str, tmp_path: Path, iris_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--store", s3_url]
    assert main([*base, "models", "register", "iris", str(iris_artifact), "--activate"]) == 0
    assert main([*base, "models", "register", "iris", str(iris_artifact)]) == 0
    assert main([*base, "models", "promote", "iris", "2"]) == 0
    assert main([*base, "models", "rollback", "iris"]) == 0
    assert main([*base, "models", "route", "iris", "1=90", "2=10"]) == 0
    assert main([*base, "models", "shadow", "iris", "2", "--alias", "staging"]) == 0
    assert main([*base, "models", "alias", "iris", "staging", "2"]) == 0
    assert main([*base, "models", "list"]) == 0
    assert main([*base, "models", "show", "iris", "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{") :])
    assert report["aliases"]["production"] == 1 and report["aliases"]["staging"] == 2
    assert main([*base, "optimize", "iris", "1", "--onnx"]) == 0
    store = S3Store(s3_url, tmp_path / "check")
    assert store.versions("iris") == [1, 2, 3]
    assert store.read_metadata("iris", 3)["artifact"] == "model.onnx"
    assert store.read_deployment("iris")["routes"]["production"]["variants"][1]["version"] == 2


@pytest.mark.parametrize("workers", ["1", "2"])
def test_batch_scores_a_version_from_a_bucket(
    s3_url: str, tmp_path: Path, iris_artifact: Path, workers: str
) -> None:
    import pandas as pd
    from sklearn.datasets import load_iris

    S3Store(s3_url, tmp_path / "admin").register("iris", iris_artifact, activate=True, actor="t")
    frame = load_iris(as_frame=True).data.head(300)
    source, target = tmp_path / "in.csv", tmp_path / "out.csv"
    frame.to_csv(source, index=False)
    argv = ["--store", s3_url, "batch", "iris", str(source), "-o", str(target)]
    assert main([*argv, "--workers", workers, "--chunk-size", "50"]) == 0
    scored = pd.read_csv(target)
    expected = joblib_predict(iris_artifact, frame)
    assert scored["prediction"].tolist() == expected
    assert set(scored["version"]) == {1}


def joblib_predict(artifact: Path, frame: object) -> list:
    import joblib

    return list(joblib.load(artifact).predict(frame))
