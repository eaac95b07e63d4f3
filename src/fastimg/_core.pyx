# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled kernels of fastimg: ``nogil`` code only, no validation.

Callers (``fastimg.search``) validate shapes, dtypes and contiguity first.
"""
cimport openmp


def openmp_max_threads() -> int:
    """Number of threads OpenMP would use by default (1 if built without OpenMP)."""
    return openmp.omp_get_max_threads()


def openmp_num_procs() -> int:
    """Number of processors OpenMP sees."""
    return openmp.omp_get_num_procs()
