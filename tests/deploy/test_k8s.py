"""deploy/k8s: each overlay renders with kustomize, passes the Kubernetes OpenAPI schemas
offline, and keeps what the server relies on: a grace period above preStop + gunicorn's
graceful timeout, probes on real routes, the image's uid, a writable volume under every path
the server writes, settings the code really reads, and autoscaler, budget and Service that
find the pods.

Values the server decides (gunicorn's timeouts, workers and port, the paths Settings derive)
are computed by running gunicorn.conf.py and Settings.from_env on the pod's environment, so a
change there is checked here too.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from flask import Flask

from serving.api.drain import QUEUE_WAIT
from serving.api.state import get_state
from serving.app import create_app
from serving.settings import Settings
from tests.deploy.test_dockerfile import args_of, final_stage, parse
from tests.recording_env import RecordingEnv

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("single", "fleet")
# The oldest minor version the managed clouds still run, and a current one.
SCHEMA_VERSIONS = ("1.32.0", "1.35.0")
# Read by boto3 for the S3 store (docs/configuration.md, SERVING_MODEL_STORE), not by our code.
AWS_VARIABLES = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"}

Manifest = dict[str, Any]


# -- rendering ---------------------------------------------------------------------------------


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl not found: `make kubectl` installs Debian's kubernetes-client")
    return found


def render(overlay: str) -> list[Manifest]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@dataclasses.dataclass
class Pod:
    """One rendered overlay, seen as the pod it runs and the environment that pod gets."""

    overlay: str
    manifests: list[Manifest]

    def all(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str) -> Manifest:
        (found,) = self.all(kind)
        return found

    def named(self, kind: str, name: str) -> Manifest:
        (found,) = [m for m in self.all(kind) if m["metadata"]["name"] == name]
        return found

    @property
    def deployment(self) -> Manifest:
        return self.one("Deployment")

    @property
    def spec(self) -> Manifest:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def labels(self) -> dict[str, str]:
        return self.deployment["spec"]["template"]["metadata"]["labels"]

    @property
    def container(self) -> Manifest:
        (container,) = self.spec["containers"]
        return container

    def secret_value(self, name: str, key: str) -> str:
        secret = self.named("Secret", name)
        if key in secret.get("stringData", {}):
            return secret["stringData"][key]
        return base64.b64decode(secret["data"][key]).decode()

    def env_sources(self) -> dict[str, str]:
        """Each variable of the container -> where it comes from (configmap, secret, ...)."""
        sources = {}
        for ref in self.container.get("envFrom", []):
            data = self.named("ConfigMap", ref["configMapRef"]["name"]).get("data", {})
            sources |= dict.fromkeys(data, "configmap")
        for var in self.container.get("env", []):
            value_from = var.get("valueFrom", {})
            sources[var["name"]] = next(iter(value_from), "value").removesuffix("Ref")
        return sources

    def environment(self) -> dict[str, str]:
        """The variables as the process sees them (a secret's value, the CPU limit...)."""
        env = {}
        for ref in self.container.get("envFrom", []):
            env |= self.named("ConfigMap", ref["configMapRef"]["name"]).get("data", {})
        for var in self.container.get("env", []):
            source = var.get("valueFrom", {})
            if "secretKeyRef" in source:
                key = source["secretKeyRef"]
                env[var["name"]] = self.secret_value(key["name"], key["key"])
            elif "configMapKeyRef" in source:
                key = source["configMapKeyRef"]
                env[var["name"]] = self.named("ConfigMap", key["name"])["data"][key["key"]]
            elif "resourceFieldRef" in source:
                field = source["resourceFieldRef"]
                kind, _, resource = field["resource"].partition(".")
                quantity = self.container["resources"][kind][resource]
                env[var["name"]] = str(math.ceil(cpu(quantity) / cpu(field["divisor"])))
            else:
                env[var["name"]] = var["value"]
        return env

    def mounts(self) -> dict[str, Manifest]:
        """mountPath -> the volume mounted there, for every writable mount."""
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        return {
            m["mountPath"]: volumes[m["name"]]
            for m in self.container.get("volumeMounts", [])
            if not m.get("readOnly")
        }

    def volume_for(self, path: str) -> Manifest | None:
        """The writable volume that holds `path` (the deepest mount above it), if any."""
        holders = [m for m in self.mounts() if PurePosixPath(path).is_relative_to(m)]
        return self.mounts()[max(holders, key=len)] if holders else None


def cpu(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def size(quantity: str) -> int:
    for suffix, factor in _BINARY.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


@pytest.fixture(scope="module", params=OVERLAYS)
def pod(request: pytest.FixtureRequest) -> Pod:
    return Pod(request.param, render(request.param))


@pytest.fixture(scope="module")
def fleet() -> Pod:
    return Pod("fleet", render("fleet"))


@pytest.fixture(scope="module")
def single() -> Pod:
    return Pod("single", render("single"))


# -- what the server makes of the pod's environment --------------------------------------------

# Runs gunicorn.conf.py under an os.environ that records every name it is asked for.
_GUNICORN_PROBE = """
import json, os, runpy, sys

class Recording(dict):
    asked = set()
    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)
    def __getitem__(self, key):
        self.asked.add(key)
        return super().__getitem__(key)
    def __contains__(self, key):
        self.asked.add(key)
        return super().__contains__(key)
    def setdefault(self, key, default=None):
        self.asked.add(key)
        return super().setdefault(key, default)

os.environ = Recording(json.loads(sys.argv[1]))
conf = runpy.run_path("gunicorn.conf.py")
names = ("graceful_timeout", "drain_seconds", "timeout", "workers", "bind", "worker_tmp_dir")
out = {name: conf[name] for name in names}
out["prometheus_dir"] = dict.get(os.environ, "PROMETHEUS_MULTIPROC_DIR")
out["asked"] = sorted(Recording.asked)
print(json.dumps(out))
"""


def gunicorn_config(env: Mapping[str, str]) -> dict[str, Any]:
    """gunicorn.conf.py's values for this environment, and the variables it read."""
    return json.loads(_gunicorn_config(json.dumps(dict(env), sort_keys=True)))


@functools.cache
def _gunicorn_config(env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", _GUNICORN_PROBE, env],
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[-1]


def settings_of(env: Mapping[str, str]) -> tuple[Settings, set[str]]:
    """Settings.from_env on the pod's environment (raises on a bad value), and what it read."""
    recording = RecordingEnv(env)
    return Settings.from_env(recording), recording.asked


def port_number(pod: Pod, port: str | int) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in pod.container["ports"] if p["name"] == port]
    return found


# -- the schemas -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_manifest_passes_the_kubernetes_schemas_strictly(
    overlay: str, version: str
) -> None:
    manifests = render(overlay)
    assert {m["kind"] for m in manifests} >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
    }
    for manifest in manifests:
        # strict: an unknown field (a typo the API server would drop silently) fails too.
        kubernetes_validate.validate(manifest, version, strict=True)


# -- shutdown and start ------------------------------------------------------------------------


def test_grace_period_outlasts_prestop_sleep_drain_and_gunicorn_graceful_timeout(
    pod: Pod,
) -> None:
    command = pod.container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    config = gunicorn_config(pod.environment())
    graceful, drain = config["graceful_timeout"], config["drain_seconds"]
    grace = pod.spec["terminationGracePeriodSeconds"]
    # The drain, then up to QUEUE_WAIT (serving.api.drain) to empty the listen queue.
    budget = float(command[1]) + drain + QUEUE_WAIT + graceful
    assert grace > budget, (grace, command, drain, graceful)


def test_startup_probe_waits_longer_than_gunicorn_lets_a_worker_boot(pod: Pod) -> None:
    probe = pod.container["startupProbe"]
    budget = probe.get("initialDelaySeconds", 0) + probe["periodSeconds"] * probe.get(
        "failureThreshold", 3
    )
    assert budget > gunicorn_config(pod.environment())["timeout"]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """The real app over an empty store (nothing deployed: ready at once)."""
    root = tmp_path_factory.mktemp("k8s-app")
    settings = Settings(
        model_store=root / "models",
        data_dir=root / "data",
        statsd_host=None,
        configure_logging=False,
        start_poller=False,
    )
    app = create_app(settings)
    yield app
    get_state(app).close()


def test_probes_and_scrape_target_are_routes_the_app_serves(pod: Pod, app: Flask) -> None:
    bound = int(gunicorn_config(pod.environment())["bind"].rpartition(":")[2])
    kinds = ("startup", "readiness", "liveness")
    targets = {kind: pod.container[f"{kind}Probe"]["httpGet"] for kind in kinds}
    annotations = pod.deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    targets["scrape"] = {
        "path": annotations["prometheus.io/path"],
        "port": int(annotations["prometheus.io/port"]),
    }
    assert targets["readiness"]["path"] == "/health/ready"  # 503 until the models are loaded
    client = app.test_client()
    for name, target in targets.items():
        assert port_number(pod, target["port"]) == bound, name
        answer = client.get(target["path"])
        assert answer.status_code == 200, (name, target["path"], answer.status_code)


# -- the pod's security ------------------------------------------------------------------------


def test_pod_runs_as_the_images_uid_and_drops_every_privilege(pod: Pod) -> None:
    (user,) = args_of(final_stage(parse((ROOT / "Dockerfile").read_text())), "USER")
    uid, _, gid = user.partition(":")
    context = pod.spec["securityContext"]
    assert context["runAsNonRoot"] is True
    assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid or uid))
    assert context["fsGroup"] == int(gid or uid)  # volumes writable by that user
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod.container["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"]["drop"] == ["ALL"]
    assert not container.get("capabilities", {}).get("add")
    assert not container.get("privileged")
    assert pod.spec["automountServiceAccountToken"] is False


def test_no_service_variables_are_injected_into_the_settings_namespace(pod: Pod) -> None:
    # With service links on, each Service NAME of the namespace puts NAME_PORT,
    # NAME_SERVICE_HOST... into every pod: for `serving`, names a setting may take one day.
    env = pod.environment()
    read = settings_of(env)[1] | set(gunicorn_config(env)["asked"])
    prefixes = {s["metadata"]["name"].upper().replace("-", "_") + "_" for s in pod.all("Service")}
    if any(name.startswith(tuple(prefixes)) for name in read):
        assert pod.spec.get("enableServiceLinks") is False


def test_every_path_the_server_writes_is_on_a_writable_volume(pod: Pod) -> None:
    env = pod.environment()
    settings, _ = settings_of(env)
    gunicorn = gunicorn_config(env)
    heartbeat = gunicorn["worker_tmp_dir"] or "/tmp"
    writes = {
        "temp files (tempfile)": env.get("TMPDIR", "/tmp"),
        "gunicorn worker heartbeat": heartbeat,
        "PROMETHEUS_MULTIPROC_DIR": gunicorn["prometheus_dir"],
        "SERVING_DATA_DIR": str(settings.data_dir),
    }
    if isinstance(settings.model_store, Path):  # the admin API and CLI write a local store
        writes["SERVING_MODEL_STORE"] = str(settings.model_store)
    else:
        writes["SERVING_CACHE_DIR"] = str(settings.store_cache_dir)
    for what, path in writes.items():
        assert PurePosixPath(path).is_absolute(), (what, path)
        volume = pod.volume_for(path)
        assert volume is not None, f"{what} ({path}) is on the read-only root filesystem"
        assert "emptyDir" in volume or "persistentVolumeClaim" in volume, (what, volume)


def test_fleet_download_cache_fits_its_volume(fleet: Pod) -> None:
    settings, _ = settings_of(fleet.environment())
    volume = fleet.volume_for(str(settings.store_cache_dir))
    assert volume is not None and "emptyDir" in volume
    # Past its sizeLimit an emptyDir gets the pod evicted: the cache's own bound must come first.
    assert settings.cache_max_bytes < size(volume["emptyDir"]["sizeLimit"])


# -- settings ----------------------------------------------------------------------------------


def test_every_variable_the_pod_sets_is_one_the_server_reads(pod: Pod) -> None:
    env = pod.environment()
    _, read_by_settings = settings_of(env)  # also: every value parses
    read_by_gunicorn = set(gunicorn_config(env)["asked"])
    assert {"SERVING_MODEL_STORE", "PORT", "WEB_CONCURRENCY"} <= read_by_settings | read_by_gunicorn
    unknown = sorted(set(env) - read_by_settings - read_by_gunicorn - AWS_VARIABLES)
    assert unknown == [], "set in deploy/k8s, read by nothing"


def test_workers_follow_the_cpu_limit_and_requests_equal_limits(pod: Pod) -> None:
    resources = pod.container["resources"]
    assert resources["requests"] == resources["limits"]  # Guaranteed: no CPU stolen from workers
    workers = gunicorn_config(pod.environment())["workers"]
    assert workers == math.ceil(cpu(resources["limits"]["cpu"]))


def test_example_secret_keeps_the_admin_api_off(pod: Pod) -> None:
    settings, _ = settings_of(pod.environment())
    assert settings.admin_token is None, "a token checked into git is a known password"


# -- the objects that find the pods ------------------------------------------------------------


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_autoscaler_scales_the_deployment_on_cpu(pod: Pod) -> None:
    hpa = pod.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    deployment = pod.deployment
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert 0 < metric["resource"]["target"]["averageUtilization"] < 100
    assert "cpu" in pod.container["resources"]["requests"]  # utilization is of the request
    low, high = hpa["spec"].get("minReplicas", 1), hpa["spec"]["maxReplicas"]
    assert 1 <= low <= high
    # A replica count in the Deployment would be put back by every `kubectl apply`.
    assert deployment["spec"].get("replicas") in (None, high if low == high else None)


def test_disruption_budget_selects_the_pods_and_never_blocks_a_drain(pod: Pod) -> None:
    pdb = pod.one("PodDisruptionBudget")["spec"]
    assert selects(pdb["selector"]["matchLabels"], pod.labels)
    fewest = pod.one("HorizontalPodAutoscaler")["spec"].get("minReplicas", 1)
    if "maxUnavailable" in pdb:
        assert pdb["maxUnavailable"] not in (0, "0%")
    else:
        assert int(pdb["minAvailable"]) < fewest, "no pod could ever be evicted"


def test_service_selects_the_pods_and_targets_the_serving_port(pod: Pod) -> None:
    service = pod.one("Service")["spec"]
    assert selects(service["selector"], pod.labels)
    assert selects(pod.deployment["spec"]["selector"]["matchLabels"], pod.labels)
    bound = int(gunicorn_config(pod.environment())["bind"].rpartition(":")[2])
    (port,) = service["ports"]
    assert port_number(pod, port["targetPort"]) == bound


# -- the two overlays --------------------------------------------------------------------------


def test_fleet_shares_an_s3_store_and_a_database_from_the_secret(fleet: Pod) -> None:
    env, sources = fleet.environment(), fleet.env_sources()
    settings, _ = settings_of(env)
    assert str(settings.model_store).startswith("s3://")
    assert settings.database_url is not None
    for secret in ("SERVING_DATABASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert sources[secret] == "secretKey", f"{secret} must come from the Secret"
    assert fleet.one("HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 3
    assert fleet.all("PersistentVolumeClaim") == [], "replicas share the bucket, not a volume"
    assert fleet.deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_single_is_one_pod_with_its_store_and_data_on_volume_claims(single: Pod) -> None:
    settings, _ = settings_of(single.environment())
    assert isinstance(settings.model_store, Path) and settings.database_url is None
    claims = {c["metadata"]["name"] for c in single.all("PersistentVolumeClaim")}
    for path in (settings.model_store, settings.data_dir):
        volume = single.volume_for(str(path))
        assert (
            volume is not None
            and volume.get("persistentVolumeClaim", {}).get("claimName") in claims
        )
    hpa = single.one("HorizontalPodAutoscaler")["spec"]
    assert single.deployment["spec"]["replicas"] == hpa["maxReplicas"] == 1
    # ReadWriteOnce claims: the old pod lets go of them before the new one mounts them.
    assert single.deployment["spec"]["strategy"]["type"] == "Recreate"
