# serving: `make run` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export SERVING_MODEL_STORE ?= model_store

.PHONY: run test lint check demo venv dev clean browser docs nginx postgres kubectl bench-features \
	edge-web

# The runtime virtualenv: re-made whenever requirements.txt changes.
$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# Test and lint tools on top of the runtime.
$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(VENV)/.runtime
dev: $(VENV)/.dev

demo: venv
	$(PY) -m serving demo

run: demo
	PORT=$(PORT) $(VENV)/bin/gunicorn -c gunicorn.conf.py

# On both cores (pytest-xdist); the layer contracts and the docs build are tests too. Then the
# image test alone (it takes both cores for minutes: beside the timing-bound tests it would
# slow them); where podman cannot run, it skips and says why.
test: dev browser nginx postgres kubectl podman edge-web
	$(PY) -m pytest -n 2
	SERVING_TEST_IMAGE=1 $(PY) -m pytest tests/deploy/test_image.py

# Headless Chromium for the dashboard's browser test (Debian's package). Never fails: where it
# cannot be installed, that one test skips and says why.
browser:
	@command -v chromium >/dev/null || (apt-get install -y chromium || (apt-get update && \
		apt-get install -y chromium)) || echo "make browser: could not install chromium;" \
		"the dashboard browser test will skip"

# onnxruntime-web for the page of edge bundles (`serving export --edge`, docs/edge.md): npm's
# package, pinned by version and checked against its registry integrity (sha512), unpacked into
# .edge-web/onnxruntime-web (git-ignored; export copies three of its files into each bundle).
# Never fails: where it cannot be fetched, export needs --no-web and the page test skips and
# says why. Debian's npm is installed where npm is missing.
ORT_WEB_VERSION := 1.30.0
ORT_WEB_SHA512 := q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ==
EDGE_WEB := .edge-web/onnxruntime-web
edge-web:
	@test -f $(EDGE_WEB)/package.json && grep -q '"version": "$(ORT_WEB_VERSION)"' \
		$(EDGE_WEB)/package.json || $(MAKE) --no-print-directory edge-web-fetch || echo \
		"make edge-web: could not fetch onnxruntime-web $(ORT_WEB_VERSION); the edge page test" \
		"will skip"

.PHONY: edge-web-fetch
edge-web-fetch:
	command -v npm >/dev/null || apt-get install -y npm || (apt-get update && apt-get install -y npm)
	rm -rf .edge-web/tmp && mkdir -p .edge-web/tmp
	cd .edge-web/tmp && npm pack --silent onnxruntime-web@$(ORT_WEB_VERSION) >/dev/null
	test "$$(openssl dgst -sha512 -binary .edge-web/tmp/onnxruntime-web-$(ORT_WEB_VERSION).tgz \
		| base64 -w0)" = "$(ORT_WEB_SHA512)"
	tar -xzf .edge-web/tmp/onnxruntime-web-$(ORT_WEB_VERSION).tgz -C .edge-web/tmp
	rm -rf $(EDGE_WEB) && mkdir -p $(EDGE_WEB)
	cp .edge-web/tmp/package/dist/ort.wasm.min.js .edge-web/tmp/package/dist/ort-wasm-simd-threaded.mjs \
		.edge-web/tmp/package/dist/ort-wasm-simd-threaded.wasm \
		$(EDGE_WEB)/
	cp .edge-web/tmp/package/package.json $(EDGE_WEB)/package.json
	rm -rf .edge-web/tmp

# nginx for the fleet test (tests/e2e/test_fleet_nginx.py), Debian's package; never fails:
# where it cannot be installed, that test skips and says why.
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || (apt-get install -y nginx || \
		(apt-get update && apt-get install -y nginx)) || echo "make nginx: could not install" \
		"nginx; the fleet test will skip"

# PostgreSQL for the telemetry tests on both engines (tests/pg.py runs initdb and pg_ctl as an
# unprivileged user in a temp dir), Debian's package; never fails: where it cannot be installed,
# those tests skip and say why.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get install -y postgresql || \
		(apt-get update && apt-get install -y postgresql)) || echo "make postgres: could not" \
		"install postgresql; the PostgreSQL telemetry tests will skip"

# kubectl for the Kubernetes manifests' test (tests/deploy/test_k8s.py renders deploy/k8s with
# `kubectl kustomize`), Debian's kubernetes-client; never fails: where it cannot be installed,
# that test skips and says why.
kubectl:
	@command -v kubectl >/dev/null || (apt-get install -y kubernetes-client || \
		(apt-get update && apt-get install -y kubernetes-client)) || echo "make kubectl: could" \
		"not install kubernetes-client; the deploy/k8s test will skip"

# The container image (Dockerfile) as $(IMAGE). With podman where it is installed, else docker:
# podman needs no daemon, while a docker client often has none to talk to (CONTAINER_ENGINE=docker
# to choose). BASE_IMAGE=... replaces the official Python base for both stages, e.g. a local
# bookworm base where Docker Hub cannot be reached (docs/deployment.md). podman: the docker
# format keeps the HEALTHCHECK (OCI images have none); the ulimits stay below a host's hard
# limits (podman's defaults are above them on some hosts, and then every RUN step fails).
# WHEELS=DIR (podman only): pip installs from wheels downloaded there beforehand, not from PyPI.
.PHONY: image podman
IMAGE ?= serving:latest
CONTAINER_ENGINE ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)
# runc where installed: Debian's crun 1.8 refuses containers on hosts with hybrid cgroups.
PODMAN_BUILD_FLAGS ?= --format docker --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 \
	$(shell command -v runc >/dev/null 2>&1 && echo --runtime=runc)
image:
	$(CONTAINER_ENGINE) build $(if $(filter podman,$(notdir $(CONTAINER_ENGINE))),$(PODMAN_BUILD_FLAGS)) \
		$(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
		$(if $(WHEELS),--volume $(abspath $(WHEELS)):/wheels:ro --build-arg PIP_NO_INDEX=1 \
			--build-arg PIP_FIND_LINKS=/wheels) -t $(IMAGE) .

# The image test alone (tests/deploy/test_image.py; not in `make test`: about 5 minutes cold,
# 1.5 with the base and the layers cached; docs/development.md).
.PHONY: test-image
test-image: dev podman
	SERVING_TEST_IMAGE=1 $(PY) -m pytest tests/deploy/test_image.py

# podman, buildah and debootstrap for the image test (opt-in with SERVING_TEST_IMAGE=1),
# Debian's packages; never fails: where they cannot be installed, that test skips and says why.
podman:
	@(command -v podman && command -v buildah && command -v debootstrap && \
		command -v newuidmap && command -v runc) >/dev/null || \
		(apt-get install -y podman buildah debootstrap uidmap runc || \
		(apt-get update && apt-get install -y podman buildah debootstrap uidmap runc)) || echo \
		"make podman: could not install podman, buildah, debootstrap or uidmap; the image test" \
		"will skip"

# `lint` fixes what it can; `check` only reads (CI-safe).
lint: dev
	$(VENV)/bin/ruff format serving tests bench gunicorn.conf.py
	$(VENV)/bin/ruff check --fix serving tests bench gunicorn.conf.py

check: dev
	$(VENV)/bin/ruff format --check serving tests bench gunicorn.conf.py
	$(VENV)/bin/ruff check serving tests bench gunicorn.conf.py
	$(VENV)/bin/lint-imports

# The documentation site (docs/, mkdocs.yml) into site/; --strict: a broken link or a page
# missing from the nav fails.
docs: dev
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# Benchmark on loopback (bench/run.py), 4-5 minutes: BENCH_QUICK=1 for under 90 s,
# BENCH_WORKERS=N (default 2), BENCH_DURATION=s per cell. Installs wrk (Debian) if missing.
.PHONY: bench bench-batch bench-peers bench-boosting bench-features wrk
bench: venv wrk
	$(PY) -m bench.run
	$(MAKE) bench-batch
	$(MAKE) bench-fleet
	$(MAKE) bench-boosting
	$(MAKE) bench-features

# The shared store and database against the defaults (bench/fleet_bench.py), about 3 minutes:
# starts a SeaweedFS and a PostgreSQL of its own, like the tests.
.PHONY: bench-fleet
bench-fleet: dev wrk postgres
	$(PY) -m bench.fleet_bench

wrk:
	command -v wrk >/dev/null || apt-get install -y wrk || (apt-get update && apt-get install -y wrk)

# `make bench` (without bench-batch) plus the peers, MLServer and MLflow, measured side by side
# with ours in the same run: about 18 minutes (BENCH_QUICK=1: about 5), plus a few minutes for
# the first install. Each peer is installed from PyPI into its own virtualenv under
# .bench-venvs/ (pins: bench/requirements-<peer>.txt; never into $(VENV)); a peer that fails to
# install is reported in the table with the reason (log: .bench-venvs/<peer>.install.log).
PEER_VENVS := .bench-venvs
PEERS := mlserver mlflow
bench-peers: venv wrk
	-$(MAKE) -k $(PEERS:%=$(PEER_VENVS)/%/.installed)
	$(PY) -m bench.run --peers

$(PEER_VENVS)/%/.installed: bench/requirements-%.txt
	rm -rf $(PEER_VENVS)/$*
	$(PYTHON) -m venv $(PEER_VENVS)/$*
	$(PEER_VENVS)/$*/bin/python -m pip install --disable-pip-version-check -r $< \
		> $(PEER_VENVS)/$*.install.log 2>&1 || (tail -n 3 $(PEER_VENVS)/$*.install.log; exit 1)
	touch $@

# Gradient boosting (HistGradientBoosting, LightGBM, XGBoost) before and after `optimize --onnx`,
# in process, 1 and 100 rows (bench/boosting_bench.py), about 2 minutes. LightGBM and XGBoost
# are test dependencies (requirements-dev.txt), hence `dev`.
bench-boosting: dev
	$(PY) -m bench.boosting_bench

# What each telemetry feature costs per request, part by part (bench/feature_cost.py, ~3 min).
bench-features: venv wrk
	$(PY) -m bench.feature_cost

# Edge bundles: size, cold start, per-row latency in Python and in Chromium (bench/edge_bench.py,
# about a minute).
.PHONY: bench-edge
bench-edge: venv edge-web browser
	$(PY) -m bench.edge_bench

# Batch scoring throughput and peak RSS next to the in-process floor (1,000,000 rows x 20).
bench-batch: venv
	$(PY) bench/batch_bench.py

# Memory per worker against the naive Flask app, with and without preload_app, before and
# after a hot swap (about 1 minute).
.PHONY: bench-memory
bench-memory: venv
	$(PY) -m bench.preload

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache $(PEER_VENVS)
