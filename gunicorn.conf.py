"""gunicorn settings for serving. Every value says why it is set and its sensible range.

Run: `gunicorn -c gunicorn.conf.py` (what `make run` and the Dockerfile do).
"""

import atexit
import gc
import glob
import multiprocessing
import os
import shutil
import tempfile

from serving.telemetry.logs import logging_config

# --- BLAS/OpenMP threads ----------------------------------------------------------------------
# One thread per worker: N workers x M BLAS threads would oversubscribe the cores. Set here,
# before any worker imports numpy, so every forked worker inherits it. Scale with workers.
for _var in (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
):
    os.environ.setdefault(_var, "1")

# --- the app ----------------------------------------------------------------------------------
# A factory call: each worker builds its own app, loader, StatsD socket and poll thread.
wsgi_app = "serving.app:create_app()"
# Off by default: with hot swap each worker loads new versions itself, so copy-on-write sharing
# of the first version is lost at the first swap. Turn on only to save memory on huge models.
preload_app = os.environ.get("GUNICORN_PRELOAD", "").lower() in ("1", "true", "yes")

# --- socket -----------------------------------------------------------------------------------
bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
# Pending connections the kernel queues while every worker is busy (64-2048).
backlog = int(os.environ.get("GUNICORN_BACKLOG", "2048"))

# --- workers ---------------------------------------------------------------------------------
# gevent workers by default: each connection is a greenlet, so a client that stalls mid-headers
# or mid-body (a slow link, or an attacker holding connections open) waits without holding the
# worker while the others are served. Prediction stays CPU-bound: one request computes at a
# time per process, so scale with workers (one per core), not connections. Measured against
# sync and gthread, calm and with 50 stalled clients: docs/performance.md "Slow clients".
#   gevent  - the default; safe to expose directly; keep-alive.
#   sync    - one connection at a time: a stalled client idles the whole worker until
#             `timeout`. Only behind a buffering proxy (nginx) that sends complete requests.
#   gthread - GUNICORN_THREADS (2-4) connections at a time, keep-alive; stalls as sync does
#             once every thread waits on a slow client.
# Each name maps to gunicorn's class with our JSON error answers (serving/api/workers.py).
_WORKER_CLASSES = {
    "gevent": "serving.api.gevent_worker.GeventWorker",
    "sync": "serving.api.workers.SyncWorker",
    "gthread": "serving.api.workers.ThreadWorker",
}
_worker_kind = os.environ.get("GUNICORN_WORKER_CLASS", "gevent")
if _worker_kind not in _WORKER_CLASSES:
    raise SystemExit(
        f"GUNICORN_WORKER_CLASS={_worker_kind!r}: choose one of {', '.join(_WORKER_CLASSES)}"
    )
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
# gunicorn turns sync with threads > 1 into its own plain gthread class (HTML errors): make
# that switch here, to ours.
if _worker_kind == "sync" and threads > 1:
    _worker_kind = "gthread"
worker_class = _WORKER_CLASSES[_worker_kind]
# gevent: open connections per worker, stalled ones included; past it the worker stops
# accepting and new ones wait in the backlog. Each costs a greenlet and a file descriptor
# (a few KiB): 1000 (gunicorn's default) x 2 workers stays under the usual 4096 fd limit and
# makes an attacker hold 2000 connections, each for at most `keepalive` s (headers) or 30 s
# (a body, serving.api.gevent_worker.BODY_TIMEOUT), to starve the server (100-10000).
worker_connections = 1000
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
# Recycle a worker after this many requests (+ jitter so they do not all restart together)
# to bound slow leaks in third-party code. 0 disables. A restarted worker loads the current
# versions before it accepts a request.
# A recycle costs a ~200 ms stall of that worker (it reloads its models before serving), so it
# is rare: at 1,000 req/s per worker, about once a minute and a half.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "100000"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "10000"))

# --- timeouts ---------------------------------------------------------------------------------
# A worker silent for `timeout` s is killed. The app answers far sooner on its own: bodies are
# capped by SERVING_MAX_BODY_BYTES and batches by SERVING_MAX_INSTANCES. Boot (loading the
# deployed models) also counts, so keep it above the slowest model load (30-300).
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
# On SIGTERM, workers finish in-flight requests for up to this long before being killed (10-60).
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
# On SIGTERM, first drain for this long: GET /health/ready answers 503 "draining" so load
# balancers stop sending new connections, while every route keeps answering; then the graceful
# stop above. A second SIGTERM ends the drain early, SIGINT/SIGQUIT stop at once. 0: no drain.
# Keep the orchestrator's grace period above drain + graceful_timeout (0-60).
drain_seconds = float(os.environ.get("SERVING_DRAIN_SECONDS", "5"))
# Seconds an idle kept-alive connection stays open (1-75; sync workers close after each
# response). gevent also allows this long for a request's headers to arrive, from the
# connection's opening: a client that stalls mid-headers is dropped after it. Keep it > 0 with
# gevent (0 would let headers take forever).
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))

# --- request limits ---------------------------------------------------------------------------
# gunicorn refuses what exceeds these before the app runs, in our JSON error shape (414, 431).
# The request line: our longest route (/v1/models/<64-char name>/versions/<n>/predict) is
# ~110 bytes and the monitoring query strings a few dozen; 4094 (gunicorn's default; its
# maximum is 8190) leaves room for tracing parameters and refuses URLs used as a payload.
limit_request_line = 4094
# Header count: a client sends ~5-15 headers, a proxy chain adds a few (X-Forwarded-*,
# traceparent); 50 leaves ample room and halves gunicorn's 100 (range 32-100).
limit_request_fields = 50
# One header's size: the admin bearer token, traceparent/baggage and a cookie on the dashboard's
# domain fit in 8190 (gunicorn's default, the size nginx and most proxies forward by default)
# (4096-16380).
limit_request_field_size = 8190

# --- files ------------------------------------------------------------------------------------
# The heartbeat file lives in RAM: on a disk-backed /tmp a slow disk can stall the heartbeat and
# get healthy workers killed (Docker's /tmp is overlayfs).
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# gunicorn's control socket (`gunicornc`) is an extra way in that we do not use: off.
control_socket_disable = True

# --- Prometheus (GET /metrics) ----------------------------------------------------------------
# prometheus_client's multiprocess mode: every worker writes its metrics into mmapped files in
# this directory and a scrape of any worker merges them all. It must be set before a worker
# imports prometheus_client (the app imports it lazily, after this file ran in the master).
# Default: a fresh directory in RAM, removed when this master exits (also after
# `--check-config`, which loads the app but starts no server). An operator may set a fixed one;
# either way on_starting empties it of the previous run's files.
_master = {}  # on_starting puts the arbiter here


def _remove_prometheus_dir(path, creator):
    """At exit of the master that made `path`, unless a USR2 successor master still uses it."""
    server = _master.get("server")
    if os.getpid() == creator and not (server is not None and server.reexec_pid):
        shutil.rmtree(path, ignore_errors=True)


if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
        prefix="serving-prometheus-", dir=worker_tmp_dir
    )
    atexit.register(_remove_prometheus_dir, os.environ["PROMETHEUS_MULTIPROC_DIR"], os.getpid())

# --- logging ----------------------------------------------------------------------------------
# The same JSON dictConfig as the app; the app logs one line per request itself, so gunicorn's
# access log is off to avoid a second line per request.
logconfig_dict = logging_config(os.environ.get("SERVING_LOG_LEVEL", "INFO").upper())
accesslog = None
# ... and no access-log line is even built (serving.api.gunicorn_logger).
logger_class = "serving.api.gunicorn_logger.Logger"
errorlog = "-"
loglevel = os.environ.get("SERVING_LOG_LEVEL", "INFO").lower()
capture_output = False


# --- hooks ------------------------------------------------------------------------------------
def on_starting(server):
    """Empty the Prometheus directory in the master, before any worker starts: counters of an
    earlier run must not add up with this one's. A master re-executed by USR2 shares it with
    the old workers still running, and leaves it alone."""
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(path, exist_ok=True)
    if not server.master_pid:
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
    _master["server"] = server
    server.log.info("prometheus multiprocess directory %s", path)
    from serving.api import drain, reload

    drain.install(server, drain_seconds, path)
    reload.install(server, path)


def on_reload(server):
    """HUP: the old workers stop once the new ones have loaded their models
    (serving.api.reload), so a reload stalls no request."""
    from serving.api.reload import reloading

    reloading(server)


def on_exit(server):
    """The master leaves: its drain flag (serving.api.drain) goes with it."""
    from serving.api.drain import remove_flag

    remove_flag(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def post_worker_init(worker):
    """Start the model poll and metrics sampler threads in the worker (never in the master:
    threads die at fork)."""
    from serving.api.prometheus import get_prometheus
    from serving.api.state import get_state

    app = getattr(worker, "wsgi", None)
    if app is not None and "serving" in getattr(app, "extensions", {}):
        # With preload_app the loader was filled in the master, maybe long ago (a worker
        # recycled by max_requests): catch up with the store before the first request.
        get_state(app).loader.refresh()
        get_state(app).loader.ensure_polling()
        get_prometheus(app).ensure_sampling()
    # Everything loaded so far (libraries, app, models) lives as long as the worker: move it
    # out of the garbage collector's sight. A full collection walks every tracked object,
    # ~150,000 here (~80 ms, the p99 of a request it interrupts); after this it walks only
    # what requests and later swaps allocate. A swapped-out model is freed by reference
    # counting as before (frozen objects are not leaked unless they sit in reference cycles).
    gc.collect()
    gc.freeze()
    # The app and its models are loaded: from now on this worker accepts connections.
    from serving.api.reload import mark_ready

    mark_ready(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    worker.log.info("worker %s ready", worker.pid)


def pre_fork(server, worker):
    """With preload_app, the master's objects are frozen before the fork: the collector of a
    worker then never touches (and copies) their pages."""
    gc.freeze()


def child_exit(server, worker):
    """A worker died, however (master): drop its live gauges (in-flight, versions, CPU,
    memory) from /metrics. Its counters and histograms stay, so totals never go back. And
    it is no longer ready (serving.api.reload)."""
    from prometheus_client import multiprocess

    from serving.api.reload import forget

    multiprocess.mark_process_dead(worker.pid)
    forget(os.environ.get("PROMETHEUS_MULTIPROC_DIR"), worker.pid)


def worker_exit(server, worker):
    """Stop the poll thread and close the StatsD socket of a worker that leaves cleanly."""
    from serving.api.state import get_state

    app = getattr(worker, "wsgi", None)
    if app is not None and "serving" in getattr(app, "extensions", {}):
        get_state(app).close()
