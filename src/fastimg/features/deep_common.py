"""Helpers shared by the deep descriptors (:mod:`fastimg.features.deep`,
:mod:`fastimg.features.onnx_cnn`, :mod:`fastimg.features.backbone`): the pooling
front-end, input sizing, pooling-parameter checks, progress reporting, the
pickling of descriptors that batch and the onnxruntime session options.
"""
from __future__ import annotations

import math
import platform
from typing import Any, Callable, Dict, Tuple, Union

import numpy as np

from fastimg.errors import DescriptorError
from fastimg.features.pooling import POOLINGS, check_map

#: Smallest input side accepted by any network (the stride of a ResNet's last block is 32).
_MIN_SIDE = 32
#: The longer side is never stretched beyond this multiple of ``input_size`` to honour
#: ``min_side`` (extreme panoramas are squashed instead).
_MAX_STRETCH = 3.0


# ----------------------------------------------------------------------------
# onnxruntime sessions
# ----------------------------------------------------------------------------
def cpu_has_vnni() -> bool:
    """Whether this x86-64 CPU has an 8-bit dot product that cannot saturate
    (AVX-512 VNNI or AVX-VNNI), as detected by fastimg's own kernels."""
    from fastimg import _core

    info = _core.lowp_target_info()
    return any(info[t][1] for t in ("avx512", "avxvnni"))


def exact_int8_needed() -> bool:
    """Whether onnxruntime's 8-bit convolutions must be told to stay exact on this CPU.

    On x86-64 without VNNI, onnxruntime multiplies uint8 activations by int8
    weights with ``vpmaddubsw``, which adds pairs of products into a saturating
    16-bit integer: large activations times large weights are clipped, and the
    int8 backbones' vectors drift far from the float32 ones (cosine down to 0.74
    per image on Corel-1k measured on an AVX2-only machine, against 0.95 with exact sums).
    With the session option ``session.x64quantprecision`` onnxruntime widens
    to 16 bits first: exact integer sums, the same as VNNI computes (the same
    vectors on every machine), at some speed (bench/deep.md).  Other CPUs
    (ARM, VNNI) accumulate exactly already.
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    return not cpu_has_vnni()


def ort_session_options(ort: Any, intra_threads: int) -> Any:
    """onnxruntime ``SessionOptions`` of every fastimg session: ``intra_threads``
    intra-op threads, one inter-op thread, errors only in the log, and exact
    8-bit sums on CPUs whose 8-bit kernels would saturate (:func:`exact_int8_needed`;
    the option only affects quantised operators)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: fastimg reports failures itself
    if exact_int8_needed():
        options.add_session_config_entry("session.x64quantprecision", "1")
    return options


# ----------------------------------------------------------------------------
# pooling front-end
# ----------------------------------------------------------------------------
def pool(x: np.ndarray, pooling: str = "crow", **params: Any) -> np.ndarray:
    """Pool one convolution map with a named pooling.

    Parameters
    ----------
    x : array_like, shape (C, H, W)
        Activations of one image.
    pooling : {"mac", "spoc", "gem", "rmac", "crow", "pwa"}
        The pooling (see :mod:`fastimg.features.pooling`).
    **params
        Pooling parameters (``p`` for GeM, ``levels`` for R-MAC, ``a``/``b``
        for CroW, ``channels``/``n_parts``/``a``/``b``/``aggregate`` for PWA).

    Returns
    -------
    numpy.ndarray of float32
        ``(C,)`` (``(len(channels) * C,)`` for PWA with ``aggregate="concat"``),
        not normalised.

    Raises
    ------
    DescriptorError
        Unknown pooling, bad parameters or a malformed map.
    """
    fn = POOLINGS.get(pooling)
    if fn is None:
        raise DescriptorError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
    try:
        return fn(check_map(x), **params)
    except TypeError as exc:
        raise DescriptorError(f"pooling {pooling!r}: invalid parameters {sorted(params)}: {exc}") from exc



def _fit_size(height: int, width: int, input_size: Union[int, Tuple[int, int]], min_side: int,
              multiple: int = 1) -> Tuple[int, int]:
    """Network input size ``(width, height)`` for an image of ``height`` x ``width`` pixels.

    A ``(width, height)`` ``input_size`` is returned as is.  An int is the longer
    side: the aspect ratio is kept, a shorter side below ``min_side`` is
    enlarged (the longer side capped at ``_MAX_STRETCH`` x ``input_size``), and
    each side is then rounded to the nearest multiple of ``multiple`` (at least
    ``multiple``), so that images of similar aspect ratios share one size.
    """
    if isinstance(input_size, tuple):
        return input_size
    long_side, short_side = max(height, width), min(height, width)
    s = input_size / long_side
    if short_side * s < min_side:  # thin image: enlarge, within limits
        s = min(min_side / short_side, _MAX_STRETCH * input_size / long_side)
    cap = int(_MAX_STRETCH * input_size)
    w = min(cap, max(min_side, int(round(width * s))))
    h = min(cap, max(min_side, int(round(height * s))))
    if multiple > 1:
        w = max(multiple, int(round(w / multiple)) * multiple)
        h = max(multiple, int(round(h / multiple)) * multiple)
    return (w, h)


def _check_input_size(value: Any) -> Union[int, Tuple[int, int]]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value < _MIN_SIDE:
            raise DescriptorError(f"input_size must be >= {_MIN_SIDE}; got {value}")
        return int(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        w, h = int(value[0]), int(value[1])
        if min(w, h) < _MIN_SIDE:
            raise DescriptorError(f"input_size (width, height) must both be >= {_MIN_SIDE}; got {value!r}")
        return (w, h)
    raise DescriptorError(f"input_size must be an int (longer side) or (width, height); got {value!r}")


def _progress(progress: Union[bool, Callable[[int, int], Any], None], total: int) -> Tuple[Any, Any]:
    if progress is True:
        from tqdm.auto import tqdm

        return tqdm(total=total, unit="img", desc="cnn"), None
    if callable(progress):
        return None, progress
    if progress in (False, None):
        return None, None
    raise DescriptorError(f"progress must be a bool or a callable(done, total); got {progress!r}")


_POOLING_PARAMS: Dict[str, Dict[str, Any]] = {
    "mac": {},
    "spoc": {},
    "gem": {"p": 3.0},
    "rmac": {"levels": 3},
    "crow": {"a": 2.0, "b": 2.0},
    "pwa": {"n_parts": 25, "channels": None, "a": 2.0, "b": 2.0},
}


class _BatchPickling:
    """Pickling of a descriptor whose ``compute_batch`` is its bound ``_compute_batch``
    (a bound method in ``__dict__`` would pickle the instance inside itself)."""

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["compute_batch"] = None
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.compute_batch = self._compute_batch  # type: ignore[attr-defined]



def _check_pooling_params(pooling: str, pp: Dict[str, Any]) -> Dict[str, Any]:
    def number(key: str, lo: float, inclusive: bool = False) -> float:
        v = pp[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or (v < lo if inclusive else v <= lo):
            raise DescriptorError(f"cnn-{pooling}: {key} must be a finite number {'>=' if inclusive else '>'} {lo}; "
                                  f"got {v!r}")
        return float(v)

    out: Dict[str, Any] = {}
    if pooling == "gem":
        out["p"] = number("p", 0.0)
    if pooling == "rmac":
        lv = pp["levels"]
        if isinstance(lv, bool) or not isinstance(lv, (int, np.integer)) or not 1 <= lv <= 8:
            raise DescriptorError(f"cnn-rmac: levels must be an int in [1, 8]; got {lv!r}")
        out["levels"] = int(lv)
    if pooling in ("crow", "pwa"):
        out["a"] = number("a", 0.0)
        out["b"] = number("b", 0.0)
    if pooling == "pwa":
        n = pp["n_parts"]
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise DescriptorError(f"cnn-pwa: n_parts must be a positive int; got {n!r}")
        out["n_parts"] = int(n)
        ch = pp["channels"]
        if ch is not None:
            try:
                ch = [int(c) for c in ch]
            except (TypeError, ValueError):
                raise DescriptorError(f"cnn-pwa: channels must be a list of channel indices; got {ch!r}") from None
            if not ch or min(ch) < 0:
                raise DescriptorError(f"cnn-pwa: channels must be a non-empty list of indices >= 0; got {ch!r}")
        out["channels"] = ch
    return out

