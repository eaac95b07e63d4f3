"""The descriptor type: :class:`Descriptor`, its working size and its input check.

Everything that describes images builds on this module: the registry
(:mod:`fastimg.features.registry`) looks descriptors up by name, the built-in
ones (:mod:`fastimg.features.classic`, :mod:`fastimg.features.deep`) construct
:class:`Descriptor` objects.  It imports nothing heavy (NumPy only; OpenCV when an
image has to be shrunk).
"""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

from fastimg.errors import DescriptorError, ImageError
from fastimg.image import shrink_to

__all__ = ["Descriptor", "WORK_SIDE", "check_bgr", "jsonable"]

#: Default working size: images are shrunk so that their longer side is at most this.
WORK_SIDE = 512


def jsonable(value: Any) -> Any:
    """Canonical JSON-compatible form of a parameter value (tuples -> lists, numpy scalars -> Python)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise DescriptorError(f"descriptor parameter value {value!r} is not JSON-serialisable")


class Descriptor:
    """A named, parameterised image descriptor.

    Parameters
    ----------
    name : str
        Registry name (``"hsv72"``, ``"spatial-hsv"``, ``"cnn-resnet50"`` ...).
    dim : int
        Length of the vectors it produces.
    compute : callable
        ``compute(bgr) -> array (dim,)`` for one ``uint8`` ``(H, W, 3)`` BGR image.
        Called from worker threads: it must be thread-safe (ideally it releases
        the GIL: OpenCV calls and ``nogil`` Numba kernels do).
    default_metric : str, optional
        The metric an index uses when none is given (a :mod:`fastimg.metrics` name).
    version : int, optional
        Bumped whenever the vectors change for the same name and parameters; an
        index built with another version cannot be extended with this one.
    params : dict, optional
        The full parameters (defaults included), JSON-serialisable.
    doc : str, optional
        One-line description for :func:`descriptors`.
    compute_batch : callable, optional
        ``compute_batch(list of bgr) -> array (n, dim)``; when present,
        :func:`describe_many` decodes images in parallel and describes them in
        batches with it (e.g. a neural network).
    max_side : int or None, optional
        Working size: images are shrunk to this longer side before ``compute``
        (default :data:`WORK_SIDE`; ``None`` = full resolution).
    batch_size : int, optional
        Batch length used with ``compute_batch``.
    compute_single : callable, optional
        A start-up-free twin of ``compute`` for describing one image (NumPy /
        OpenCV, no Numba: importing numba and loading its cached kernels costs
        about a second, far more than one image's description).  It must
        return exactly the same values as ``compute`` (bit for bit);
        :func:`describe` uses it (``compute(bgr, single=True)``), while
        :func:`describe_many` keeps ``compute``, faster per image in bulk.

    Notes
    -----
    Subclasses may override :meth:`_raw` (and :meth:`_raw_single`) instead of
    passing ``compute``.
    """

    def __init__(
        self,
        name: str,
        dim: int,
        compute: Optional[Callable[[np.ndarray], np.ndarray]] = None,
        *,
        default_metric: str = "bhattacharyya",
        version: int = 1,
        params: Optional[Mapping[str, Any]] = None,
        doc: str = "",
        compute_batch: Optional[Callable[[List[np.ndarray]], np.ndarray]] = None,
        max_side: Optional[int] = WORK_SIDE,
        batch_size: int = 32,
        compute_single: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    ) -> None:
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise DescriptorError(f"descriptor {name!r}: dim must be a positive int; got {dim!r}")
        self.name = str(name)
        self.dim = int(dim)
        self._compute = compute
        self.default_metric = str(default_metric)
        self.version = int(version)
        self.params: Dict[str, Any] = jsonable(dict(params or {}))
        self.doc = doc
        self.compute_batch = compute_batch
        self.max_side = max_side
        self.batch_size = int(batch_size)
        self._compute_single = compute_single

    # -- identity --------------------------------------------------------------
    def spec(self) -> Dict[str, Any]:
        """JSON-serialisable description, enough to rebuild the descriptor.

        Returns
        -------
        dict
            ``{"name", "params", "dim", "version", "default_metric", "max_side"}``;
            :func:`descriptor_from_spec` inverts it.
        """
        return {
            "name": self.name,
            "params": dict(self.params),
            "dim": self.dim,
            "version": self.version,
            "default_metric": self.default_metric,
            "max_side": self.max_side,
        }

    def __repr__(self) -> str:
        p = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"Descriptor({self.name!r}{', ' if p else ''}{p}; dim={self.dim}, metric={self.default_metric!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Descriptor) and self.spec() == other.spec()

    def __hash__(self) -> int:
        return hash(json.dumps(self.spec(), sort_keys=True))

    # -- computation -----------------------------------------------------------
    def _raw(self, bgr: np.ndarray) -> np.ndarray:
        if self._compute is None:
            raise NotImplementedError(f"descriptor {self.name!r} has no compute function")
        return self._compute(bgr)

    def _raw_single(self, bgr: np.ndarray) -> np.ndarray:
        """The raw vector by the single-image path (``compute_single``), else by :meth:`_raw`."""
        if self._compute_single is not None:
            return self._compute_single(bgr)
        return self._raw(bgr)

    def raw(self, bgr: np.ndarray, *, single: bool = False) -> np.ndarray:
        """The descriptor's values for an image already at working size, unchecked.

        What :meth:`compute` returns before its checks, its shrinking to
        :attr:`max_side` and its conversion to ``float32``: descriptors built
        from others (``spatial-*``, ``combo``) call it on image regions.
        ``single`` as in :meth:`compute`.
        """
        return self._raw_single(bgr) if single else self._raw(bgr)

    def compute(self, bgr: np.ndarray, *, single: bool = False) -> np.ndarray:
        """Describe one image.

        Parameters
        ----------
        bgr : numpy.ndarray
            ``uint8`` array of shape ``(H, W, 3)``, BGR (as from :func:`fastimg.image.load_image`).
            If its longer side exceeds :attr:`max_side` it is first shrunk to the
            working size (``cv2.INTER_AREA``), so ``compute(load_image(p))`` and
            :func:`describe` agree up to JPEG reduced-decoding differences.
        single : bool, optional
            Use the descriptor's start-up-free single-image implementation
            (``compute_single``) when it has one: the same values, bit for bit,
            without importing Numba (what :func:`describe` does).  The default
            path is the faster one per image once started (:func:`describe_many`).

        Returns
        -------
        numpy.ndarray
            ``float32`` array of shape ``(dim,)``.

        Raises
        ------
        ImageError
            If ``bgr`` is not a non-empty ``uint8`` ``(H, W, 3)`` array.
        """
        check_bgr(bgr)
        if self.max_side is not None and max(bgr.shape[0], bgr.shape[1]) > self.max_side:
            bgr = shrink_to(bgr, self.max_side)
        raw = self._raw_single(bgr) if single else self._raw(bgr)
        v = np.asarray(raw, dtype=np.float32).reshape(-1)
        if v.shape[0] != self.dim:
            raise DescriptorError(f"descriptor {self.name!r} produced {v.shape[0]} values; expected dim={self.dim}")
        return v


def check_bgr(bgr: Any) -> None:
    """Raise :class:`ImageError` unless ``bgr`` is a non-empty ``uint8`` ``(H, W, 3)`` array."""
    if not isinstance(bgr, np.ndarray) or bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
        what = f"{type(bgr).__name__}" if not isinstance(bgr, np.ndarray) else f"{bgr.dtype} array of shape {bgr.shape}"
        raise ImageError("<array>", "invalid array", f"expected uint8 (H, W, 3) BGR; got {what} "
                         "(use fastimg.load_image to convert)")
    if bgr.shape[0] == 0 or bgr.shape[1] == 0:
        raise ImageError("<array>", "invalid array", f"empty image of shape {bgr.shape}")
