# Berth — make targets. `make install` then `make run` starts Berth on embedded defaults;
# `make test` runs everything CI runs.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PROTOS := protos/shim/v1/shim.proto protos/snapshotter/v1/snapshotter.proto
DEB_PACKAGES := redis-server busybox-static iptables nftables docker-registry openssl tmux tini gcc libc6-dev
# The exec helper (see shim/supervisor/exec_child.py): static, so that its exec maps no ld.so.
NATIVE := shim/native/berth-exec
CC ?= cc
NATIVE_CFLAGS := -O2 -Wall -Wextra -Werror -static

.PHONY: install install-deb install-py native run test protos protos-check lint bench clean

install: install-deb native install-py

native: $(NATIVE)

$(NATIVE): $(NATIVE).c
	$(CC) $(NATIVE_CFLAGS) -o $@ $<

install-deb:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

install-py:
	$(PIP) install -q -e '.[dev]'

run:
	berthd

test:
	$(PYTHON) -m pytest

protos:
	$(PYTHON) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy apiserver shim snapshotter registry_client protos common

bench:
	$(PYTHON) -m tests.bench $(BENCH_ARGS)

clean:
	rm -rf build *.egg-info .pytest_cache .mypy_cache .ruff_cache $(NATIVE)
