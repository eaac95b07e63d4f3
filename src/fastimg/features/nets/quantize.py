"""8-bit versions of the backbone graphs (onnxruntime static quantisation, QDQ).

:func:`quantize_int8` turns a float32 backbone graph
(:func:`fastimg.features.nets.backbones.build_backbone`) into a graph whose
convolutions run on 8-bit integers: weights quantised per output channel to
``int8``, activations to ``uint8`` with one scale per tensor, written in the
QDQ format (``QuantizeLinear``/``DequantizeLinear`` pairs that onnxruntime fuses
into ``QLinearConv``), with ``onnxruntime.quantization.quantize_static``.

The activation ranges are calibrated on **generated** images
(:func:`calibration_images`: 1/f colour noise, filled shapes with hard edges,
blur and sensor noise, from a fixed seed), never on downloaded data and never
on the images being described, so the quantised graph - and every vector it
produces - depends only on the weights, the calibration recipe
(:data:`QUANTIZER_VERSION`) and onnxruntime's quantiser.  EfficientNet-Lite and
MobileNetV2 clip their activations with ReLU6, so most ranges are fixed by the
network itself; the calibration mostly sets those of the linear bottlenecks.

The result is cached like the float32 graph
(:func:`fastimg.features.backbone_cache.backbone_model` with ``precision="int8"``).
Its effect on quality and speed is measured in ``bench/deep.md``.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from fastimg.errors import DescriptorError

__all__ = ["QUANTIZER_VERSION", "CALIBRATION_IMAGES", "calibration_images", "quantize_int8"]

#: Bumped whenever the calibration images or the quantisation settings change
#: (part of the cached graph's key).
QUANTIZER_VERSION = 1
#: Generated images the activation ranges are calibrated on.
CALIBRATION_IMAGES = 32
#: Their sizes (height, width): both orientations of a 3:2 photo at 384 px.
_CALIBRATION_SIZES: Tuple[Tuple[int, int], ...] = ((256, 384), (384, 256))


def calibration_images(n: int = CALIBRATION_IMAGES, seed: int = 0,
                       sizes: Sequence[Tuple[int, int]] = _CALIBRATION_SIZES) -> List[np.ndarray]:
    """Generated ``uint8`` BGR images with photo-like statistics (deterministic).

    Each image is colour noise with a ``1/f**alpha`` power spectrum (alpha
    drawn in [0.8, 1.4], as natural images), its channels mixed, contrast
    and brightness drawn at random, then 3-11 filled ellipses and polygons
    of random colours (hard edges), an optional Gaussian blur and sensor
    noise.  Image ``i`` has size ``sizes[i % len(sizes)]``.
    """
    import cv2

    out = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        rng = np.random.default_rng([seed, i])
        fy = np.fft.fftfreq(h)[:, None]
        fx = np.fft.rfftfreq(w)[None, :]
        f = np.sqrt(fx ** 2 + fy ** 2)
        f[0, 0] = 1.0
        alpha = rng.uniform(0.8, 1.4)
        img = np.empty((h, w, 3), np.float32)
        for c in range(3):
            spectrum = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f ** alpha
            img[..., c] = np.fft.irfft2(spectrum, s=(h, w))
        img = img @ (rng.normal(size=(3, 3)) * 0.4 + np.eye(3)).T.astype(np.float32)
        img = (img - img.mean()) / (img.std() + 1e-6) * rng.uniform(30, 70) + rng.uniform(70, 180, 3)
        img = np.ascontiguousarray(img, dtype=np.float32)
        for _ in range(int(rng.integers(3, 12))):
            colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
            if rng.random() < 0.5:
                centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
                axes = (int(rng.integers(5, w // 3)), int(rng.integers(5, h // 3)))
                cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
            else:
                pts = rng.integers(0, [w, h], size=(int(rng.integers(3, 7)), 2)).astype(np.int32)
                cv2.fillPoly(img, [pts], colour)
        k = int(rng.choice([1, 3, 5]))
        if k > 1:
            img = cv2.GaussianBlur(img, (k, k), 0)
        img += rng.normal(0.0, rng.uniform(1.0, 8.0), img.shape).astype(np.float32)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def quantize_int8(model: bytes, spec: Any, images: Optional[Sequence[np.ndarray]] = None) -> bytes:
    """The 8-bit QDQ version of a float32 backbone graph.

    Parameters
    ----------
    model : bytes
        A serialized float32 graph with input ``"image"`` (N, 3, H, W).
    spec : fastimg.features.nets.backbones.BackboneSpec
        Its preprocessing (:meth:`BackboneSpec.preprocess`).
    images : sequence of uint8 BGR images, optional
        Calibration images (default :func:`calibration_images`); one forward
        pass each.

    Returns
    -------
    bytes
        The serialized quantised graph (same input and output names).

    Raises
    ------
    DescriptorError
        onnxruntime's quantisation tools are missing or fail.
    """
    try:
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
    except ImportError:
        raise DescriptorError(f"{spec.name}: int8 needs onnxruntime (with its quantization tools) and onnx: "
                              "pip install 'fastimg[deep]'") from None
    calib = list(images) if images is not None else calibration_images()

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it: Iterator[np.ndarray] = iter(calib)

        def get_next(self) -> Optional[dict]:
            im = next(self._it, None)
            return None if im is None else {"image": spec.preprocess(im, bgr=True)}

    root = logging.getLogger()
    advice = _DropAdvice()
    with tempfile.TemporaryDirectory(prefix="fastimg-quant-") as tmp:
        src, dst = Path(tmp) / "float32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(model)
        root.addFilter(advice)
        try:
            quantize_static(
                os.fspath(src), os.fspath(dst), _Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"CalibTensorRangeSymmetric": False},
            )
        except Exception as exc:  # noqa: BLE001 - the quantiser raises many kinds
            raise DescriptorError(f"{spec.name}: int8 quantisation failed: {type(exc).__name__}: {exc}") from None
        finally:
            root.removeFilter(advice)
        return dst.read_bytes()


class _DropAdvice(logging.Filter):
    """Drops the quantiser's "Please consider pre-processing" advice (logged on the root
    logger at every call): the graphs it is given are already folded and shape-complete."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider")
