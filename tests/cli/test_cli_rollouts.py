"""Rollout verbs of the command line, run as real subprocesses: route, shadow, alias, rollback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from serving.store.model_store import ModelStore

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("sklearn", "pandas", "flask", "numpy", "joblib")


def cli(store: ModelStore, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving", "--store", str(store.root), "--actor", "ci", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def ok(store: ModelStore, *args: str) -> str:
    result = cli(store, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1, result.stdout  # one readable line
    return result.stdout.strip()


def refused(store: ModelStore, *args: str) -> str:
    result = cli(store, *args)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ")
    return result.stderr.strip()


@pytest.fixture
def iris(store: ModelStore, iris_artifact: Path, iris_artifact_v2: Path) -> ModelStore:
    """iris 1 in production, iris 2 registered."""
    store.register("iris", iris_artifact, activate=True, actor="t")
    store.register("iris", iris_artifact_v2, actor="t")
    return store


def _deployment(store: ModelStore) -> dict[str, Any]:
    return json.loads(store.deployment_path("iris").read_bytes())


def test_route_splits_an_alias_and_audits_it(iris: ModelStore) -> None:
    line = ok(iris, "models", "route", "iris", "1=90", "2=10", "--sticky")
    assert line.startswith("iris: production routed 1=90% 2=10%, sticky by routing key")
    route = _deployment(iris)["routes"]["production"]
    assert route["variants"] == [{"version": 1, "weight": 90.0}, {"version": 2, "weight": 10.0}]
    assert route["sticky"] is True
    event = iris.history("iris")[-1]
    assert (event["action"], event["actor"], event["route"]) == ("route", "ci", route)


def test_route_of_a_named_alias_is_random_without_sticky(iris: ModelStore) -> None:
    line = ok(iris, "models", "route", "iris", "1=1", "2=3", "--alias", "staging")
    assert "staging routed 1=25% 2=75%, random" in line
    deployment = _deployment(iris)
    assert deployment["aliases"] == {"production": 1, "staging": 2}
    assert deployment["routes"]["staging"]["sticky"] is False


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (["1=-5", "2=10"], ">= 0"),
        (["1=0", "2=0"], "all be zero"),
        (["1=50", "9=50"], "does not exist"),
        (["one=50"], "VERSION=WEIGHT"),
        (["1=lots"], "VERSION=WEIGHT"),
        (["1"], ">= 0"),
    ],
    ids=["negative", "all-zero", "unknown-version", "bad-version", "bad-weight", "no-weight"],
)
def test_bad_weights_are_one_line_and_change_nothing(
    iris: ModelStore, weights: list[str], message: str
) -> None:
    before = iris.deployment_path("iris").read_bytes()
    events = len(iris.history("iris"))
    assert message in refused(iris, "models", "route", "iris", *weights)
    assert iris.deployment_path("iris").read_bytes() == before
    assert len(iris.history("iris")) == events


def test_shadow_on_off_and_refusals(iris: ModelStore) -> None:
    assert ok(iris, "models", "shadow", "iris", "2") == "iris: production shadow off -> 2"
    assert _deployment(iris)["shadows"] == {"production": 2}
    assert ok(iris, "models", "shadow", "iris", "off") == "iris: production shadow 2 -> off"
    assert _deployment(iris)["shadows"] == {}
    assert "'two'" in refused(iris, "models", "shadow", "iris", "two")
    assert "no version 7" in refused(iris, "models", "shadow", "iris", "7")
    assert "not in the store" in refused(iris, "models", "shadow", "nope", "off")
    assert not (iris.root / "nope").exists()


def test_alias_points_a_named_alias_at_a_version(iris: ModelStore) -> None:
    assert ok(iris, "models", "alias", "iris", "staging", "2") == "iris: staging - -> 2"
    assert _deployment(iris)["aliases"] == {"production": 1, "staging": 2}
    assert iris.history("iris")[-1]["action"] == "promote"
    assert "invalid alias" in refused(iris, "models", "alias", "iris", "../x", "2")


def test_rollback_of_a_named_alias(iris: ModelStore) -> None:
    ok(iris, "models", "alias", "iris", "staging", "1")
    ok(iris, "models", "alias", "iris", "staging", "2")
    assert ok(iris, "models", "rollback", "iris", "--alias", "staging") == (
        "iris: staging rolled back to 1"
    )
    assert _deployment(iris)["aliases"] == {"production": 1, "staging": 1}
    assert "no earlier version" in refused(iris, "models", "rollback", "iris")
    assert "points at no version" in refused(iris, "models", "rollback", "iris", "--alias", "x")


def test_rollback_ends_a_canary(iris: ModelStore) -> None:
    ok(iris, "models", "route", "iris", "1=90", "2=10")
    assert ok(iris, "models", "rollback", "iris") == "iris: production rolled back to 1"
    deployment = _deployment(iris)
    assert deployment["aliases"] == {"production": 1} and deployment["routes"] == {}
    assert iris.history("iris")[-1]["ended_route"]["variants"][1]["version"] == 2


def test_show_displays_routes_and_shadows(iris: ModelStore) -> None:
    ok(iris, "models", "route", "iris", "1=90", "2=10", "--sticky")
    ok(iris, "models", "shadow", "iris", "2")
    result = cli(iris, "models", "show", "iris")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "alias production -> version 1: ok" in text
    assert "route 1=90% 2=10%, sticky by routing key (experiment iris/production/" in text
    assert "shadow version 2" in text
    assert "route production 1=90% 2=10%" in text and "shadow production off -> 2 by ci" in text
    report = json.loads(cli(iris, "models", "show", "iris", "--json").stdout)
    assert report["routes"]["production"]["sticky"] is True
    assert report["shadows"] == {"production": 2}


def test_rollout_verbs_import_neither_scikit_learn_nor_flask(iris: ModelStore) -> None:
    verbs = [
        ["models", "route", "iris", "1=90", "2=10"],
        ["models", "shadow", "iris", "2"],
        ["models", "alias", "iris", "staging", "2"],
        ["models", "rollback", "iris"],
        ["models", "promote", "iris", "2"],
        ["models", "list"],
    ]
    program = (
        "import sys\n"
        "from serving.cli.main import main\n"
        f"for verb in {verbs!r}:\n"
        f"    assert main(['--store', {str(iris.root)!r}, *verb]) == 0, verb\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
