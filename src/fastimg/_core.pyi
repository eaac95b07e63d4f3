"""Type stubs for the compiled core (``fastimg._core``)."""
from typing import Any, Dict, Optional, Tuple

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
LOWP_TARGETS: Tuple[str, ...]
LOWP_BEST: str
I8_PANEL_MIN_QUERIES: int
F16_PANEL_MIN_QUERIES: int

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
    out_ids: Optional[npt.NDArray[np.int64]] = ...,
    out_values: Optional[npt.NDArray[np.float32]] = ...,
    panels: int = ...,
) -> Tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
def read_sum(data: npt.NDArray[np.float32], n_threads: int = ..., chunk_rows: int = ...) -> float: ...
def _aligned_rows(nrows: int, ncols: int, fill: float) -> npt.NDArray[np.float32]: ...
def lowp_target_info() -> Dict[str, Tuple[bool, bool]]: ...
def i8_topk(
    codes: npt.NDArray[np.uint8],
    queries: npt.NDArray[np.int8],
    kk: int,
    qscale: npt.NDArray[np.float32],
    qoff: npt.NDArray[np.int32],
    alpha: npt.NDArray[np.float32],
    rscale: npt.NDArray[np.float32],
    err: Optional[npt.NDArray[np.float32]] = ...,
    bias: Optional[npt.NDArray[np.float32]] = ...,
    mask: Optional[npt.NDArray[np.uint8]] = ...,
    n_threads: int = ...,
    chunk_rows: int = ...,
    panels: int = ...,
    target: int = ...,
) -> Tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
def f16_topk(
    codes: npt.NDArray[np.uint16],
    queries: npt.NDArray[np.float32],
    kk: int,
    alpha: npt.NDArray[np.float32],
    rscale: npt.NDArray[np.float32],
    err: Optional[npt.NDArray[np.float32]] = ...,
    bias: Optional[npt.NDArray[np.float32]] = ...,
    mask: Optional[npt.NDArray[np.uint8]] = ...,
    n_threads: int = ...,
    chunk_rows: int = ...,
    panels: int = ...,
    target: int = ...,
) -> Tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
RESCORE_COSINE: int
RESCORE_PEARSON: int
RESCORE_L2: int
RESCORE_BHATTACHARYYA: int
def rescore_rows(
    data: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    cand: npt.NDArray[np.int64],
    metric: int,
    n_threads: int = ...,
) -> npt.NDArray[np.float64]: ...
def rescore_topk(
    data: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    cand: npt.NDArray[np.int64],
    k: int,
    metric: int,
    higher: bool,
    n_threads: int = ...,
) -> Tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
