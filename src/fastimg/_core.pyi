"""Type stubs for the compiled core (``fastimg._core``)."""
from typing import Optional, Tuple

import numpy as np
import numpy.typing as npt

KIND_IP: int
KIND_CHISQR: int
KIND_CHISQR_ALT: int
KIND_INTERSECT: int
KIND_KL_DIV: int
KIND_L1: int
PANEL_WIDTHS: Tuple[int, int]
PANEL_MIN_QUERIES: int
PANEL_NARROW_MAX: int
PANELS_FAST: bool

def openmp_max_threads() -> int: ...
def openmp_num_procs() -> int: ...
def fused_topk(
    data: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    kk: int,
    kind: int = ...,
    bias: Optional[npt.NDArray[np.float32]] = ...,
    mask: Optional[npt.NDArray[np.uint8]] = ...,
    aux: Optional[npt.NDArray[np.float32]] = ...,
    active: Optional[npt.NDArray[np.int32]] = ...,
    n_active: Optional[npt.NDArray[np.int64]] = ...,
    n_threads: int = ...,
    chunk_rows: int = ...,
    out_values: Optional[npt.NDArray[np.float32]] = ...,
    out_ids: Optional[npt.NDArray[np.int64]] = ...,
    panels: int = ...,
) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
def read_sum(data: npt.NDArray[np.float32], n_threads: int = ..., chunk_rows: int = ...) -> float: ...
def heap_new(nq: int, kk: int) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
def heap_push_block(
    scores: npt.NDArray[np.float32],
    row0: int,
    heap_values: npt.NDArray[np.float32],
    heap_ids: npt.NDArray[np.int64],
    bias: Optional[npt.NDArray[np.float32]] = ...,
    mask: Optional[npt.NDArray[np.uint8]] = ...,
    n_threads: int = ...,
) -> None: ...
def heap_finish(heap_values: npt.NDArray[np.float32], heap_ids: npt.NDArray[np.int64], n_threads: int = ...) -> None: ...
def _heap_topk_test(
    values: npt.NDArray[np.float32], k: int, ids: Optional[npt.NDArray[np.int64]] = ...
) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
