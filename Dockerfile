# serving: scikit-learn models behind gunicorn, in two stages.
#   docker build -t serving .
#   docker run -p 8000:8000 -v serving-models:/models serving
#   docker exec <container> python -m serving demo     # optional: train the demo models
# Stop with a grace period above the drain (5 s), emptying the listen queue (up to 2 s) and
# gunicorn's graceful_timeout (30 s): `docker stop -t 40` (docs/deployment.md "Shutdown").

# Both stages use the same base: the venv's interpreter is a symlink to the base's python3.11,
# so it only works in an identical runtime image. The default is the official pinned image;
# where Docker Hub cannot be reached, a local Python 3.11 base stands in for both stages
# (`--build-arg BASE_IMAGE=...`; docs/deployment.md builds one from Debian bookworm).
ARG BASE_IMAGE=python:3.11.7-slim-bookworm

# --- builder: dependencies only ----------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1
# pip's own settings pass through as build arguments, unset by default (PyPI): a private index
# (PIP_INDEX_URL), or wheels downloaded beforehand and mounted into the build (PIP_FIND_LINKS
# with PIP_NO_INDEX=1, e.g. `podman build --volume`). Build arguments show in the image
# history: never put a password in them.
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX

# A venv is one directory to copy into the runtime stage, without pip's build leftovers.
# `python3`: the official image has both names, Debian's python3 package only this one.
RUN python3 -m venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH"

# requirements.txt alone first: this layer (the slow one) is rebuilt only when the pins change,
# not on every code edit. slim has no compiler, so every pin must ship a wheel for the platform.
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt

# --- runtime: the venv, the code, an unprivileged user -----------------------------------------
FROM ${BASE_IMAGE} AS runtime

# Fixed, numeric UID/GID 10001: above any host system range, the same on every build, so volume
# ownership is predictable and Kubernetes `runAsNonRoot` can verify it. /models is created and
# owned by it before VOLUME, so a fresh named volume starts out writable by the app.
# (A bind mount keeps the host's ownership: chown it to 10001:10001 on the host.)
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin app \
    && mkdir /models /data \
    && chown 10001:10001 /models /data

# Logs straight to stdout; no .pyc writes (the code is read-only for the app user anyway).
# One BLAS/OpenMP thread per worker: gunicorn scales with processes, not threads.
# SERVING_MODEL_STORE points at the volume; PORT is read by gunicorn.conf.py and the HEALTHCHECK.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    SERVING_MODEL_STORE=/models \
    SERVING_DATA_DIR=/data \
    PORT=8000 \
    PATH="/opt/venv/bin:$PATH"

# Dependencies before code, as in the builder: a code change leaves the venv layer cached.
COPY --from=builder /opt/venv /opt/venv

# Code stays owned by root: the app user can read it but not change it.
WORKDIR /app
COPY gunicorn.conf.py ./
COPY serving/ ./serving/

# The model store: versions and deployment.json live outside the image and survive upgrades.
# The prediction log and feedback (SQLite, WAL): written by the workers, kept across upgrades.
VOLUME ["/models", "/data"]

USER 10001:10001
EXPOSE 8000

# Ready = every deployed model has a loaded version (/health/ready answers 503 until then).
# Python's urllib, not curl: the slim image has no curl and adding it would only widen it.
# The proxy handler is emptied so HTTP(S)_PROXY variables never route the probe elsewhere.
# Any error (refused, timeout, non-2xx) raises, so python exits 1 = unhealthy.
# start-period covers model loading at boot (gunicorn's boot timeout is 60 s).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.build_opener(r.ProxyHandler({})).open('http://127.0.0.1:%s/health/ready' % os.environ.get('PORT', '8000'), timeout=4)"]

# Exec form: gunicorn is PID 1 and receives SIGTERM itself for a graceful shutdown.
CMD ["gunicorn", "-c", "gunicorn.conf.py"]
