"""Small helpers to write an inference graph as ONNX with the ``onnx`` package.

:class:`GraphBuilder` accumulates nodes and float32 initializers under
generated unique names and returns an ``onnx.ModelProto``;
:func:`fold_batchnorm` folds an inference-mode batch norm into the preceding
convolution.  ``onnx`` is imported only when a graph is built, so importing
this module stays cheap.

    >>> g = GraphBuilder("tiny")                                    # doctest: +SKIP
    >>> x = g.input("image", ["N", 3, "H", "W"])                    # doctest: +SKIP
    >>> y = g.conv(x, w, b, stride=2, auto_pad="SAME_UPPER")         # doctest: +SKIP
    >>> g.output(g.clip(y, 0.0, 6.0), "features", ["N", 16, "h", "w"])  # doctest: +SKIP
    >>> model = g.build()                                           # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from fastimg.errors import DescriptorError

__all__ = ["GraphBuilder", "fold_batchnorm", "OPSET", "IR_VERSION"]

#: ONNX operator set the graphs use (onnxruntime >= 1.13 runs it).
OPSET = 17
#: IR version written into the models (the one that goes with opset 17), so
#: an older onnxruntime does not refuse a file written by a newer ``onnx``.
IR_VERSION = 8

Dim = Union[int, str, None]


def fold_batchnorm(
    weight: np.ndarray,
    bias: Optional[np.ndarray],
    gamma: np.ndarray,
    beta: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float,
) -> Tuple[np.ndarray, np.ndarray]:
    """Fold ``BatchNorm(conv(x))`` (inference mode) into one convolution.

    ``BN(y) = gamma * (y - mean) / sqrt(var + eps) + beta``, applied per
    output channel, equals a convolution with weights scaled by
    ``s = gamma / sqrt(var + eps)`` and bias ``beta + s * (bias - mean)``.

    Parameters
    ----------
    weight : numpy.ndarray, shape (C_out, C_in / groups, kH, kW)
        Convolution weights (or ``(C_out, C_in)`` for a linear layer).
    bias : numpy.ndarray, shape (C_out,), or None
        Convolution bias (None when the convolution has none).
    gamma, beta, mean, var : numpy.ndarray, shape (C_out,)
        The batch norm's ``weight``, ``bias``, ``running_mean``, ``running_var``.
    eps : float
        The batch norm's epsilon.

    Returns
    -------
    weight, bias : numpy.ndarray (float32)
        The folded convolution's weights (same shape) and bias ``(C_out,)``;
        computed in float64 and rounded once.
    """
    c_out = weight.shape[0]
    for name, a in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)):
        if a.shape != (c_out,):
            raise DescriptorError(f"batch norm {name} has shape {a.shape}, expected ({c_out},) to match weights {weight.shape}")
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    w = weight.astype(np.float64) * scale.reshape((c_out,) + (1,) * (weight.ndim - 1))
    b0 = np.zeros(c_out) if bias is None else bias.astype(np.float64)
    b = beta.astype(np.float64) + scale * (b0 - mean.astype(np.float64))
    return w.astype(np.float32), b.astype(np.float32)


class GraphBuilder:
    """Accumulate an ONNX graph: inputs, nodes, float32 initializers, outputs.

    Every method that adds a node returns the name of its output, so a
    network reads as a chain of calls.  Names are generated (``conv_12``)
    unless given.

    Parameters
    ----------
    name : str
        The graph's name (recorded in the model).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._nodes: List[Any] = []
        self._inits: List[Tuple[str, np.ndarray]] = []
        self._inputs: List[Tuple[str, List[Dim]]] = []
        self._outputs: List[Tuple[str, List[Dim]]] = []
        self._used: Dict[str, int] = {}
        self._const_cache: Dict[Tuple[str, bytes], str] = {}

    # -- naming ----------------------------------------------------------------
    def unique(self, stem: str) -> str:
        """A fresh name ``stem_<n>``."""
        n = self._used.get(stem, 0)
        self._used[stem] = n + 1
        return f"{stem}_{n}"

    # -- graph inputs, outputs, constants ----------------------------------------
    def input(self, name: str, shape: Sequence[Dim]) -> str:
        """Declare a float32 graph input; string dims are symbolic (dynamic)."""
        self._inputs.append((name, list(shape)))
        return name

    def output(self, value: str, name: str, shape: Sequence[Dim]) -> str:
        """Expose ``value`` as the float32 graph output ``name``."""
        if value != name:
            self.node("Identity", [value], name=name)
        self._outputs.append((name, list(shape)))
        return name

    def initializer(self, array: np.ndarray, stem: str = "w") -> str:
        """Add a constant tensor (float arrays are stored as float32)."""
        a = np.ascontiguousarray(array)
        if a.dtype.kind == "f":
            a = a.astype(np.float32, copy=False)
        name = self.unique(stem)
        self._inits.append((name, a))
        return name

    def scalar(self, value: float) -> str:
        """A float32 scalar initializer, shared by every node that asks for the same value."""
        a = np.array(value, dtype=np.float32)
        key = ("f32", a.tobytes())
        if key not in self._const_cache:
            self._const_cache[key] = self.initializer(a, "const")
        return self._const_cache[key]

    # -- nodes -----------------------------------------------------------------------
    def node(self, op: str, inputs: Sequence[str], name: Optional[str] = None, **attrs: Any) -> str:
        """Add one ``op`` node with a single output; return the output's name."""
        from onnx import helper

        out = name or self.unique(op.lower())
        self._nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def conv(
        self,
        x: str,
        weight: np.ndarray,
        bias: Optional[np.ndarray] = None,
        *,
        stride: int = 1,
        group: int = 1,
        pads: Optional[Sequence[int]] = None,
        auto_pad: Optional[str] = None,
        name: Optional[str] = None,
    ) -> str:
        """2-D convolution ``Conv(x, weight, bias)``.

        Parameters
        ----------
        x : str
            Input, NCHW.
        weight : numpy.ndarray, shape (C_out, C_in / group, kH, kW)
        bias : numpy.ndarray, shape (C_out,), optional
        stride : int
            Same stride along H and W.
        group : int
            ``C_in`` for a depthwise convolution.
        pads : sequence of 4 ints, optional
            Explicit ``(top, left, bottom, right)`` zero padding.
        auto_pad : {"SAME_UPPER", "SAME_LOWER", "VALID"}, optional
            ONNX automatic padding, computed from each input's size at run
            time (``SAME_UPPER`` is TensorFlow's ``"SAME"``: the odd pixel of
            padding goes to the bottom / right).  Exclusive with ``pads``.
        name : str, optional
            Output name.
        """
        if pads is not None and auto_pad is not None:
            raise DescriptorError("conv: give pads or auto_pad, not both")
        if weight.ndim != 4:
            raise DescriptorError(f"conv: weights must be 4-D (C_out, C_in/group, kH, kW), got shape {weight.shape}")
        kh, kw = int(weight.shape[2]), int(weight.shape[3])
        inputs = [x, self.initializer(weight, "conv_w")]
        if bias is not None:
            inputs.append(self.initializer(bias, "conv_b"))
        attrs: Dict[str, Any] = {"kernel_shape": [kh, kw], "strides": [stride, stride], "group": group}
        if auto_pad is not None:
            attrs["auto_pad"] = auto_pad
        else:
            attrs["pads"] = list(pads) if pads is not None else [0, 0, 0, 0]
        return self.node("Conv", inputs, name=name or self.unique("conv"), **attrs)

    def clip(self, x: str, lo: float, hi: float) -> str:
        """``min(max(x, lo), hi)`` (ReLU6 is ``clip(x, 0, 6)``)."""
        return self.node("Clip", [x, self.scalar(lo), self.scalar(hi)])

    def relu(self, x: str) -> str:
        """``max(x, 0)``."""
        return self.node("Relu", [x])

    def add(self, a: str, b: str) -> str:
        """Element-wise ``a + b``."""
        return self.node("Add", [a, b])

    def global_average_pool(self, x: str) -> str:
        """Mean over H and W: (N, C, H, W) -> (N, C, 1, 1)."""
        return self.node("GlobalAveragePool", [x])

    def flatten(self, x: str) -> str:
        """(N, C, 1, 1) -> (N, C)."""
        return self.node("Flatten", [x], axis=1)

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray, name: Optional[str] = None) -> str:
        """``x @ weight.T + bias`` (PyTorch ``nn.Linear``; weight ``(out, in)``)."""
        return self.node(
            "Gemm", [x, self.initializer(weight, "fc_w"), self.initializer(bias, "fc_b")], name=name, transB=1
        )

    # -- the model -------------------------------------------------------------------
    def build(self, doc: str = "", metadata: Optional[Dict[str, str]] = None) -> Any:
        """Return the ``onnx.ModelProto`` (checked with ``onnx.checker``).

        Parameters
        ----------
        doc : str
            The graph's ``doc_string``.
        metadata : dict of str to str, optional
            Recorded as the model's ``metadata_props``.
        """
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        def vi(name: str, shape: List[Dim]) -> Any:
            return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

        inits = [numpy_helper.from_array(a, name) for name, a in self._inits]
        graph = helper.make_graph(
            self._nodes,
            self.name,
            [vi(n, s) for n, s in self._inputs],
            [vi(n, s) for n, s in self._outputs],
            initializer=inits,
            doc_string=doc,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="fastimg.features.nets",
            ir_version=IR_VERSION,
        )
        if metadata:
            helper.set_model_props(model, dict(metadata))
        onnx.checker.check_model(model)
        return model
