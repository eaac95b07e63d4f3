"""The package builds, imports cheaply and its compiled core uses OpenMP."""
from __future__ import annotations

import os
import subprocess
import sys

import fastimg


def test_version_is_exposed():
    from importlib.metadata import version

    assert fastimg.__version__ == version("fastimg")


def test_core_is_compiled_with_openmp():
    from fastimg import _core

    assert _core.__file__.endswith((".so", ".pyd")), _core.__file__
    cores = os.cpu_count() or 1
    assert _core.openmp_num_procs() == cores
    if cores >= 2:
        assert _core.openmp_max_threads() > 1


def test_import_is_cheap():
    code = (
        "import sys, fastimg; heavy = [m for m in ('numba', 'cv2', 'hnswlib', 'fastimg._core', 'numpy', 'dask', "
        "'distributed', 'fastimg.distributed', 'fastapi', 'uvicorn', 'starlette', 'fastimg.serve.app') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_unknown_attribute_is_a_clear_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fastimg.nope  # noqa: B018
