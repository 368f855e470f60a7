"""Settings: every environment variable the app reads, parsed and validated in one place."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from serving.errors import ConfigError

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Configuration of one app. Tests build their own; production uses `from_env()`."""

    # A local directory, or `s3://BUCKET/PREFIX` (serving.store.s3_store) shared by replicas;
    # downloads of an object store's versions are kept in `cache_dir` (default data_dir/cache),
    # up to `cache_max_bytes` (versions no deployment refers to are evicted first).
    model_store: Path | str = Path("model_store")
    cache_dir: Path | None = None
    cache_max_bytes: int = 10 * 1024**3
    poll_interval: float = 1.0
    max_body_bytes: int = 8 * 1024 * 1024
    max_instances: int = 10_000
    statsd_host: str | None = "127.0.0.1"
    statsd_port: int = 8125
    statsd_prefix: str = "serving"
    admin_token: str | None = dataclasses.field(default=None, repr=False)
    # With it (or the admin token) set, POST /v1/feedback needs one of them as a bearer token.
    feedback_token: str | None = dataclasses.field(default=None, repr=False)
    log_level: str = "INFO"
    # Refuse (False) or load with a loud warning (True) a version trained with another
    # scikit-learn version than the one installed: pickles are not portable across versions.
    allow_version_mismatch: bool = False
    # Unpickle joblib/pickle artifacts (True) or never (False): then only skops and ONNX
    # versions serve, and register, batch, show and optimize refuse joblib files too.
    allow_pickle: bool = True
    # Record the registering operator (`--actor`, else user@host) as `created_by` in a
    # version's metadata (False: omitted). Shown only to the admin when an admin token is set.
    record_created_by: bool = True
    # Pinned-version requests for versions no alias deploys are loaded on demand and kept
    # in a small per-worker LRU cache of this size (0 = only deployed versions are served).
    pinned_cache_size: int = 2
    # The model `POST /invocations` (MLflow protocol) scores; None: the only deployed one.
    default_model: str | None = None
    # Feed numeric models fitted on DataFrames a bare float64 array when a check at load time
    # shows identical answers on the sample input (about 3x less scikit-learn overhead per call).
    array_input: bool = True
    # Answer linear pipelines (StandardScaler + LogisticRegression, Ridge...) with a numpy
    # kernel when it gives the model's answers on check rows at load time (serving.runtime.kernels).
    fast_kernels: bool = True
    # The prediction log (feedback, A/B reports): SQLite under this directory, shared by the
    # workers. `log_sample` is the share of requests logged (0 turns the log off); rows older
    # than `log_retention_days`, beyond the newest `log_max_rows` or past `log_max_bytes` (SQLite:
    # the file; PostgreSQL: the log's tables) are pruned. Inputs are kept for the first
    # `log_input_rows` instances of a request only (0: never), outputs for `log_output_rows`.
    data_dir: Path = Path("data")
    # PostgreSQL (`postgresql://USER:PASSWORD@HOST:PORT/DB`) instead of SQLite in `data_dir` for
    # the prediction log, feedback, drift and traffic counts: one database every replica shares.
    # Out of the repr: it may carry a password.
    database_url: str | None = dataclasses.field(default=None, repr=False)
    log_sample: float = 1.0
    log_retention_days: float = 7.0
    log_max_rows: int = 1_000_000
    log_max_bytes: int = 1024**3
    log_input_rows: int = 10
    log_output_rows: int = 1000
    # Drift monitoring: each worker flushes its live counts every `monitor_flush` s (0: off);
    # PSI at or above `drift_warn` / `drift_alert` marks a feature warn / alert.
    monitor_flush: float = 5.0
    drift_warn: float = 0.1
    drift_alert: float = 0.25
    # Per-worker LRU cache of predictions, in entries (0: off). See serving/cache.py.
    prediction_cache: int = 0
    # A prediction running past this many seconds answers 504 and the worker lives on
    # (serving.runtime.deadline; sync workers). 0: no deadline but gunicorn's timeout.
    request_timeout: float = 10.0
    configure_logging: bool = True
    start_poller: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read `SERVING_*` variables; raise ConfigError naming the variable on a bad value."""
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        return cls(
            model_store=_store_location(reader.text("SERVING_MODEL_STORE", "model_store")),
            cache_dir=Path(cache) if (cache := reader.text("SERVING_CACHE_DIR", "")) else None,
            cache_max_bytes=reader.integer("SERVING_CACHE_MAX_BYTES", 10 * 1024**3, low=1),
            poll_interval=reader.number("SERVING_POLL_INTERVAL", 1.0, low=0.05, high=3600),
            max_body_bytes=reader.integer("SERVING_MAX_BODY_BYTES", 8 * 1024 * 1024, low=1024),
            max_instances=reader.integer("SERVING_MAX_INSTANCES", 10_000, low=1),
            statsd_host=reader.text("SERVING_STATSD_HOST", "127.0.0.1") or None,
            statsd_port=reader.integer("SERVING_STATSD_PORT", 8125, low=1, high=65535),
            statsd_prefix=reader.text("SERVING_STATSD_PREFIX", "serving"),
            admin_token=reader.text("SERVING_ADMIN_TOKEN", "") or None,
            feedback_token=reader.text("SERVING_FEEDBACK_TOKEN", "") or None,
            log_level=reader.choice("SERVING_LOG_LEVEL", "INFO", _LOG_LEVELS),
            allow_version_mismatch=reader.flag("SERVING_ALLOW_VERSION_MISMATCH", False),
            allow_pickle=reader.flag("SERVING_ALLOW_PICKLE", True),
            record_created_by=reader.flag("SERVING_RECORD_CREATED_BY", True),
            pinned_cache_size=reader.integer("SERVING_PINNED_CACHE_SIZE", 2, low=0, high=64),
            array_input=reader.flag("SERVING_ARRAY_INPUT", True),
            fast_kernels=reader.flag("SERVING_FAST_KERNELS", True),
            default_model=reader.text("SERVING_DEFAULT_MODEL", "") or None,
            data_dir=Path(reader.text("SERVING_DATA_DIR", "data") or "data"),
            database_url=reader.database_url("SERVING_DATABASE_URL"),
            log_sample=reader.number("SERVING_LOG_SAMPLE", 1.0, low=0.0, high=1.0),
            log_retention_days=reader.number(
                "SERVING_LOG_RETENTION_DAYS", 7.0, low=0.001, high=3650
            ),
            log_max_rows=reader.integer("SERVING_LOG_MAX_ROWS", 1_000_000, low=1),
            log_max_bytes=reader.integer("SERVING_LOG_MAX_BYTES", 1024**3, low=1024**2),
            log_input_rows=reader.integer("SERVING_LOG_INPUT_ROWS", 10, low=0),
            log_output_rows=reader.integer("SERVING_LOG_OUTPUT_ROWS", 1000, low=1),
            monitor_flush=reader.number("SERVING_MONITOR_FLUSH", 5.0, low=0.0, high=3600),
            drift_warn=reader.number("SERVING_DRIFT_WARN", 0.1, low=0.0, high=100),
            drift_alert=reader.number("SERVING_DRIFT_ALERT", 0.25, low=0.0, high=100),
            prediction_cache=reader.integer("SERVING_PREDICTION_CACHE", 0, low=0, high=1_000_000),
            request_timeout=reader.number("SERVING_REQUEST_TIMEOUT", 10.0, low=0.0, high=3600),
        )

    @property
    def store_cache_dir(self) -> Path:
        return self.cache_dir or Path(self.data_dir) / "cache"


def _store_location(text: str) -> Path | str:
    """A path, or an `s3://` URL kept as text (a Path would fold its double slash)."""
    if text.startswith("s3://"):
        bucket = text[len("s3://") :].partition("/")[0]
        if not 3 <= len(bucket) <= 63:
            raise ConfigError(f"SERVING_MODEL_STORE={text!r}: use s3://BUCKET/PREFIX")
        return text
    return Path(text or "model_store")


class _Reader:
    """Parses one variable at a time and says which one is wrong."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str, default: str) -> str:
        return self._env.get(name, default).strip()

    def number(self, name: str, default: float, low: float, high: float) -> float:
        raw = self._env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        if not low <= value <= high:
            raise ConfigError(f"{name}={raw!r} must be between {low} and {high}")
        return value

    def integer(self, name: str, default: int, low: int, high: int | None = None) -> int:
        raw = self._env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ConfigError(f"{name}={raw!r} must be {bound}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._env.get(name, default).strip().upper()
        if value not in choices:
            raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")
        return value

    def database_url(self, name: str) -> str | None:
        """A `postgresql://` (or `postgres://`) URL, or None; the password never in an error."""
        raw = self.text(name, "")
        if not raw:
            return None
        parts = urlsplit(raw)
        if parts.scheme not in ("postgresql", "postgres"):
            shown = f"{parts.scheme}://..." if parts.scheme else "a value without a scheme"
            raise ConfigError(
                f"{name} must be a postgresql://USER:PASSWORD@HOST:PORT/DB URL, not {shown}"
            )
        return raw

    def flag(self, name: str, default: bool) -> bool:
        raw = self._env.get(name)
        if raw is None or raw.strip() == "":
            return default
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={raw!r} must be true or false")
