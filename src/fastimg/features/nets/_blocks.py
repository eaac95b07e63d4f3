"""Pieces shared by the backbone builders: the inverted-residual block and
checked access to a state dict's tensors."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Set, Tuple

import numpy as np

from fastimg.features.nets.onnx_build import fold_batchnorm
from fastimg.features.nets.pth import WeightFileError

__all__ = ["MBConv", "StateDictShapes"]


@dataclass(frozen=True)
class MBConv:
    """One inverted-residual block: ``in_ch -> in_ch * expand -> out_ch``."""

    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    expand: int

    @property
    def hidden(self) -> int:
        return self.in_ch * self.expand

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch


class StateDictShapes:
    """Read tensors from a state dict, checking each one's shape.

    Errors name the weight file (``source``), the network (``what``) and the
    key.  :meth:`check_all_used` then refuses tensors the network ignored -
    a sign that the file belongs to another network.
    """

    def __init__(self, sd: Mapping[str, np.ndarray], source: str, what: str) -> None:
        self.sd = sd
        self.source = source
        self.what = what
        self.used: Set[str] = set()

    def get(self, key: str, shape: Tuple[int, ...]) -> np.ndarray:
        a = self.sd.get(key)
        if a is None:
            raise WeightFileError(self.source, f"not {self.what} weights: no tensor {key!r}")
        if tuple(a.shape) != tuple(shape):
            raise WeightFileError(
                self.source, f"not {self.what} weights: {key} has shape {tuple(a.shape)}, expected {tuple(shape)}"
            )
        if a.dtype.kind != "f":
            raise WeightFileError(self.source, f"{key} has dtype {a.dtype}, expected a float type")
        if not np.all(np.isfinite(a)):
            raise WeightFileError(self.source, f"{key} holds NaN or infinite values")
        self.used.add(key)
        return a

    def conv_bn(self, conv: str, bn: str, c_out: int, c_in: int, k: int, eps: float) -> Tuple[np.ndarray, np.ndarray]:
        w = self.get(f"{conv}.weight", (c_out, c_in, k, k))
        return fold_batchnorm(
            w, None,
            self.get(f"{bn}.weight", (c_out,)), self.get(f"{bn}.bias", (c_out,)),
            self.get(f"{bn}.running_mean", (c_out,)), self.get(f"{bn}.running_var", (c_out,)),
            eps,
        )

    def check_all_used(self) -> None:
        extra = sorted(k for k in self.sd if k not in self.used and not k.endswith("num_batches_tracked"))
        if extra:
            raise WeightFileError(
                self.source, f"not {self.what} weights: {len(extra)} unexpected tensors, e.g. {extra[:3]}"
            )
