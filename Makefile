# foresync: every target a person or CI needs. `make setup` is idempotent.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.8
APT_TOOLS := qemu-utils libnbd-bin fio nbdkit e2fsprogs fuse3 python3-libnbd openssl systemd s3cmd rclone etcd-server postgresql
# command each Debian package is checked by, so `setup` only calls apt when one is missing
APT_PROBES := qemu-img nbdinfo fio nbdkit mkfs.ext4 fusermount3 openssl systemd-analyze s3cmd rclone pg_ctlcluster

.PHONY: setup demo test unit integration lint bench sim chaos dashboard clean

setup: $(VENV)/.synced apt-tools

apt-tools:
	@missing=0; for c in $(APT_PROBES); do command -v $$c >/dev/null || missing=1; done; \
	[ -e /usr/lib/python3/dist-packages/nbd.py ] || missing=1; \
	if [ $$missing = 1 ]; then \
	  echo "setup: installing Debian tools: $(APT_TOOLS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_TOOLS) >/dev/null; \
	fi

$(VENV)/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null || python3 -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	uv venv --quiet --allow-existing $(VENV)
	UV_PROJECT_ENVIRONMENT=$(VENV) uv sync --quiet --frozen
	@touch $@

demo: setup
	$(VENV)/bin/foresync demo

dashboard: setup  # docs/img/dashboard.png, from a real pair (contrib/grafana/render.py)
	$(PY) contrib/grafana/render.py

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy --strict src
	$(VENV)/bin/lint-imports

unit: setup
	$(VENV)/bin/pytest -q tests/unit

integration: setup
	$(VENV)/bin/pytest -q tests/integration

test: lint
	$(VENV)/bin/pytest -q tests

SEEDS ?= 1000
SEED ?= 0
GROUP ?= 0
sim: setup
	$(PY) -m foresync.testing.sim --seeds $(SEEDS) --seed $(SEED) --group $(GROUP)

CYCLES ?= 5
MODE ?= lookahead
# make chaos CLUSTER=1 runs in sync mode: every promise is kept across the failovers too
CLUSTER_MODE ?= sync
chaos: setup
ifeq ($(CLUSTER),1)
	$(PY) -m foresync.testing.cluster_chaos --cycles $(CYCLES) --mode $(CLUSTER_MODE)
else
	$(PY) -m foresync.testing.chaos --cycles $(CYCLES) --mode $(MODE)
endif

bench: setup
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/replication.py $(BENCH_ARGS_REPL)
	$(PY) bench/floor.py
	$(PY) bench/cpu.py $(BENCH_ARGS_CPU)
	$(PY) bench/resync.py $(BENCH_ARGS_RESYNC)
	$(PY) bench/objects_predict.py
	$(PY) bench/objects_prefix_model.py
	$(PY) bench/record_pair.py --rounds 3 $(BENCH_ARGS_RECORD)
	$(PY) bench/flush_bound.py --tune
	$(PY) bench/objects_latency.py
	$(PY) bench/volumes.py
	$(PY) bench/link_share.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
