# qkdnet: set-up, main job and checks. Every target works on a fresh Debian machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
DEB_PACKAGES := libyang2-dev libyang2-tools chromium
STATE ?= state
DURATION ?= 60

.PHONY: setup demo test bench interop clean-state fuzz soak crash

setup: $(STAMP)

# libyang-python 2.8.0 builds against Debian's libyang2 2.1.30 (see pyproject.toml).
$(STAMP): pyproject.toml
	@dpkg -s $(DEB_PACKAGES) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(DEB_PACKAGES); }
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

# The main job: boot a network from the default topology and show it working.
demo: setup
	rm -rf $(STATE)/demo  # each demo boots the network afresh (datastores, logs and network.json of the last one go)
	$(VENV)/bin/qkdnet up --state-dir $(STATE)/demo --duration $(DURATION)

test: setup
	$(PY) -m pytest -q

# Drive a running network only through its interfaces with third-party tools (see README "Interop suite").
INTEROP_STAMP := $(VENV)/.interop-installed
$(INTEROP_STAMP): interop/requirements.txt $(STAMP)
	@command -v curl >/dev/null && command -v openssl >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq curl openssl; }
	$(PY) -m pip install -q -r interop/requirements.txt
	@touch $(INTEROP_STAMP)

interop: setup $(INTEROP_STAMP)
	$(PY) interop/run.py

# Bad-input fuzzing (README "Limits" / "Access control"): the long version of tests/test_fuzz_*.py and
# tests/test_access.py (<= 15 min), printing reliability.inputs_tried / bad_answers in the bench format.
fuzz: setup
	QKDNET_FUZZ=long PYTHONPATH=tests timeout 900 $(PY) -m pytest -q -p fuzz.plugin -o addopts= --timeout 900 \
		tests/test_fuzz_netconf.py tests/test_fuzz_rest.py tests/test_fuzz_forwarder.py tests/test_access.py

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-state:
	rm -rf $(STATE)

# Reliability, long versions (README "Reliability"): `make crash` SIGKILLs nodes of a running chain
# CYCLES times under ETSI 014 load and relays; `make soak` runs it too, then the MadQCI twin for
# DURATION seconds (default 600 here), and prints bench-format figures (reliability.*, soak.*).
CYCLES ?= 100
crash: setup
	$(PY) -m reliability.crash --cycles $(CYCLES)

soak: DURATION = 600
soak: setup
	$(PY) -m reliability.crash --cycles $(CYCLES); c=$$?; \
	$(PY) -m reliability.soak --duration $(DURATION); s=$$?; exit $$(( c || s ))
