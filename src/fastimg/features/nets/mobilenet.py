"""MobileNetV2 (torchvision layout) as an ONNX graph, built from its state dict.

The network follows torchvision's ``torchvision/models/mobilenetv2.py``
(``MobileNetV2(width_mult=1.0)``, weights ``mobilenet_v2-b0353104.pth``):

* ``features.0``: 3x3 conv, stride 2, 32 channels, BN, ReLU6;
* ``features.1`` ... ``features.17``: inverted residuals ``(t, c, n, s)`` =
  ``(1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2)
  (6,320,1,1)``; each is a 1x1 expansion conv + BN + ReLU6 (absent when
  ``t == 1``), a depthwise 3x3 conv (stride s on the first of a stage) + BN +
  ReLU6, a 1x1 projection conv + BN, plus the input when stride is 1 and the
  channel counts agree;
* ``features.18``: 1x1 conv to 1280, BN, ReLU6 - the exposed feature map;
* ``classifier``: global average pool, dropout, linear 1280 -> 1000.

Unlike EfficientNet-Lite, padding is PyTorch's symmetric ``(k - 1) // 2``
(1 pixel on every side for 3x3, also for stride 2).  Batch norms (epsilon
1e-5) are folded into the convolutions.
"""
from __future__ import annotations

from typing import Any, List, Mapping, Tuple

import numpy as np

from fastimg.features.nets._blocks import MBConv, StateDictShapes
from fastimg.features.nets.onnx_build import GraphBuilder

__all__ = ["mobilenet_v2_blocks", "build_mobilenet_v2"]

_SETTING: Tuple[Tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_STEM = 32
_HEAD = 1280
_BN_EPS = 1e-5


def mobilenet_v2_blocks() -> List[MBConv]:
    """The 17 inverted residuals of MobileNetV2 (width 1.0), in order."""
    blocks: List[MBConv] = []
    cin = _STEM
    for t, c, n, s in _SETTING:
        for i in range(n):
            blocks.append(MBConv(cin, c, 3, s if i == 0 else 1, t))
            cin = c
    return blocks


def build_mobilenet_v2(
    state_dict: Mapping[str, np.ndarray],
    *,
    with_logits: bool = False,
    source: str = "<state dict>",
) -> Any:
    """Build torchvision's MobileNetV2 inference graph as an ``onnx.ModelProto``.

    Parameters
    ----------
    state_dict : mapping of str to numpy.ndarray
        torchvision's ``MobileNetV2().state_dict()`` (keys ``features.*``,
        ``classifier.1.*``).
    with_logits : bool
        Also output the 1000 ImageNet logits (``"logits"``, shape (N, 1000)).
    source : str
        Named in error messages (the weight file's path).

    Returns
    -------
    onnx.ModelProto
        Input ``"image"``: float32 NCHW ``(N, 3, H, W)``, RGB, normalised with
        ImageNet's mean and std on 0-1 values; N, H, W dynamic.  Output
        ``"features"``: ``(N, 1280, h, w)`` with ``h = ceil(H / 32)`` for
        ``H`` a multiple of 32 (in general each stride-2 layer maps
        ``n -> (n - 1) // 2 + 1``); then ``"logits"`` when asked for.

    Raises
    ------
    WeightFileError
        A tensor is missing or has the wrong shape, or the state dict holds
        tensors this network does not use.
    """
    W = StateDictShapes(state_dict, source, "torchvision MobileNetV2")
    g = GraphBuilder("mobilenet_v2")
    x = g.input("image", ["N", 3, "H", "W"])

    def cbr(x: str, conv: str, bn: str, c_out: int, c_in: int, k: int, stride: int, group: int, act: bool) -> str:
        w, b = W.conv_bn(conv, bn, c_out, c_in, k, _BN_EPS)
        p = (k - 1) // 2
        y = g.conv(x, w, b, stride=stride, group=group, pads=[p, p, p, p])
        return g.clip(y, 0.0, 6.0) if act else y

    x = cbr(x, "features.0.0", "features.0.1", _STEM, 3, 3, 2, 1, True)
    blocks = mobilenet_v2_blocks()
    for i, blk in enumerate(blocks, start=1):
        p = f"features.{i}.conv"
        inp = x
        j = 0
        if blk.expand != 1:
            x = cbr(x, f"{p}.0.0", f"{p}.0.1", blk.hidden, blk.in_ch, 1, 1, 1, True)
            j = 1
        x = cbr(x, f"{p}.{j}.0", f"{p}.{j}.1", blk.hidden, 1, 3, blk.stride, blk.hidden, True)
        x = cbr(x, f"{p}.{j + 1}", f"{p}.{j + 2}", blk.out_ch, blk.hidden, 1, 1, 1, False)
        if blk.residual:
            x = g.add(x, inp)
    last = len(blocks) + 1
    feats = g.output(
        cbr(x, f"features.{last}.0", f"features.{last}.1", _HEAD, blocks[-1].out_ch, 1, 1, 1, True),
        "features", ["N", _HEAD, "h", "w"],
    )
    if with_logits or "classifier.1.weight" in state_dict:
        fc_w = W.get("classifier.1.weight", (1000, _HEAD))
        fc_b = W.get("classifier.1.bias", (1000,))
    W.check_all_used()
    if with_logits:
        g.output(g.linear(g.flatten(g.global_average_pool(feats)), fc_w, fc_b), "logits", ["N", 1000])
    return g.build(doc="MobileNetV2 (torchvision layout, fastimg.features.nets.mobilenet), batch norm folded")
