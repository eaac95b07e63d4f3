"""Build the compiled core (``fastimg._core``) with Cython, -O3 and OpenMP.

Environment switches (as in pyroaring's setup.py):

* ``FASTIMG_ARCH=native`` (or any ``-march`` value) adds ``-march=...``; off by
  default so wheels run on any x86-64 / aarch64 machine.
* ``FASTIMG_DEBUG=1`` builds with ``-O0 -g`` and Cython bounds checks on
  (``_core.pyx`` sets no directive of its own, so these are the ones used).

The C kernels are headers next to ``_core.pyx`` (``fi_heap.h``, ``fi_scan.h``,
``fi_lowp.h``), declared for Cython in ``_heap.pxd`` / ``_scan.pxd`` / ``_lowp.pxd``
and shipped with the package.  Code for CPU features beyond the baseline (AVX2,
AVX-512 VNNI, AVX-VNNI) is compiled through per-function ``target`` attributes
and chosen at run time, so no ``-m`` flag is needed and a wheel built on one
machine runs on another.
"""
import os
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("FASTIMG_DEBUG", "") not in ("", "0")
arch = os.environ.get("FASTIMG_ARCH", "")

if sys.platform == "win32":
    compile_args = ["/O2", "/openmp"]
    link_args = []
elif sys.platform == "darwin":
    compile_args = ["-O3", "-Xpreprocessor", "-fopenmp"]
    link_args = ["-lomp"]
else:
    compile_args = ["-O0", "-g"] if debug else ["-O3", "-fno-math-errno"]
    compile_args += ["-fopenmp"]
    link_args = ["-fopenmp"]
if arch and sys.platform != "win32":
    compile_args.append(f"-march={arch}")

extensions = [
    Extension(
        "fastimg._core",
        ["src/fastimg/_core.pyx"],
        include_dirs=[np.get_include(), "src/fastimg"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        include_path=["src"],  # cimport fastimg._heap / fastimg._scan
        compiler_directives={
            "boundscheck": debug,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": debug,
        },
    ),
)
