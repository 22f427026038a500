# Everything a fresh machine needs: system packages (as root), a .venv with the project, then the job.
SHELL := /bin/bash
PYTHON ?= python3
# A second interpreter gets a venv of its own: PYTHON=/usr/bin/python3 VENV=.venv-debian make test
VENV ?= .venv
BIN := $(VENV)/bin
DEMO := recipes/hello
# The demo signing key lives in the project, apart from the user's own keyring.
DEMO_GNUPGHOME := $(CURDIR)/.demo-gnupg

.PHONY: setup system-deps venv native bytecode demo test lint bench clean

setup: system-deps venv

system-deps:
	@scripts/install-system-deps

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 'setuptools>=77'
	DUALBUILD_PURE=1 $(BIN)/pip install -q -e '.[dev]'
	touch $@

# The per-entry hot path (setup.py lists it) compiled with mypyc, in place beside its
# sources; compiled again after any change to the package, since Python imports a compiled
# module before its source (dualbuild/__init__.py warns when one is stale).
native: $(VENV)/native.stamp

$(VENV)/native.stamp: setup.py $(shell find dualbuild -name '*.py') $(BIN)/.installed
	$(BIN)/python setup.py -q build_ext --inplace --force
	touch $@

# The editable install leaves no .pyc files, and with PYTHONDONTWRITEBYTECODE set none is
# ever written: every dualbuild command would compile its modules again (0.3 s here).
# Python checks each .pyc against its source, so a stale one is never used.
bytecode: native
	$(BIN)/python -m compileall -q dualbuild

$(DEMO)/busybox-rootfs.tar: scripts/busybox_rootfs.py
	$(BIN)/python scripts/busybox_rootfs.py $@

# A DEMO signing key, made on first use in a project-local keyring; never use it for releases.
$(DEMO_GNUPGHOME)/demo-key.fpr: | venv
	mkdir -p -m 700 $(DEMO_GNUPGHOME)
	GNUPGHOME=$(DEMO_GNUPGHOME) $(BIN)/dualbuild key create --name "dualbuild demo" \
	  --email demo@dualbuild.invalid --comment "DEMO KEY - not for releases" \
	  --export $(DEMO_GNUPGHOME)/demo-key.asc > $@.tmp
	mv $@.tmp $@

demo: setup bytecode $(DEMO)/busybox-rootfs.tar $(DEMO_GNUPGHOME)/demo-key.fpr
	GNUPGHOME=$(DEMO_GNUPGHOME) $(BIN)/dualbuild build $(DEMO)/recipe.toml \
	  --sign-key "$$(cat $(DEMO_GNUPGHOME)/demo-key.fpr)" --json; \
	  status=$$?; GNUPGHOME=$(DEMO_GNUPGHOME) gpgconf --kill all; exit $$status

test: setup bytecode lint
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check setup.py dualbuild tests scripts soak bench
	$(BIN)/ruff format --check setup.py dualbuild tests scripts soak bench
	$(BIN)/mypy

# Benchmarks (issue 8), not part of `make test`: root, buildah, gpg, pigz, actool, mmdebstrap.
# ~11 min with the default 3 runs; trees are cached in ~/.cache/dualbuild-bench. Results: BENCHMARKS.md.
BENCH_ARGS ?=
# bench/layers.py: layered images and the step cache on two realistic recipes (issue 18).
bench: setup bytecode
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/layers.py $(LAYERS_BENCH_ARGS)

clean:
	rm -rf $(VENV) build dualbuild/layer/*.so $(DEMO)/dist $(DEMO)/busybox-rootfs.tar $(DEMO_GNUPGHOME) .pytest_cache .mypy_cache .ruff_cache
