"""Plain parameter layers of the component graph: Linear, Conv2d, and the parameter-free Flatten."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from metta.agent.lib.metta_layer import AgentContext, LayerBase, ParamLayer, Shape
from metta.common.code_paths import gpu_forms


def _single_source(name: str, in_shapes: list[Shape]) -> Shape:
    if len(in_shapes) != 1:
        raise ValueError(f"component {name!r} takes exactly one source, got {len(in_shapes)}")
    return in_shapes[0]


class Linear(ParamLayer):
    """``nn.Linear`` over a flat per-sample input; ``nn_params.out_features`` (or ``output_size``) sets the width."""

    def __init__(self, name: str, sources: list[str], context: AgentContext, nn_params: dict, **kwargs):
        super().__init__(name, sources, context, **kwargs)
        self.nn_params = dict(nn_params)

    def _make_net(self, in_shapes: list[Shape]) -> Shape:
        shape = _single_source(self.name, in_shapes)
        if len(shape) != 1:
            raise ValueError(
                f"component {self.name!r} (Linear) needs a flat input, its source gives {shape}; add a Flatten"
            )
        self.weight_net = nn.Linear(shape[0], **self.nn_params)
        return (self.weight_net.out_features,)


class Conv2d(ParamLayer):
    """``nn.Conv2d`` over ``[C, H, W]``; ``nn_params`` are passed through (out_channels, kernel_size, ...)."""

    def __init__(self, name: str, sources: list[str], context: AgentContext, nn_params: dict, **kwargs):
        super().__init__(name, sources, context, **kwargs)
        self.nn_params = dict(nn_params)

    def _make_net(self, in_shapes: list[Shape]) -> Shape:
        shape = _single_source(self.name, in_shapes)
        if len(shape) != 3:
            raise ValueError(f"component {self.name!r} (Conv2d) needs a [C, H, W] input, its source gives {shape}")
        self.weight_net = nn.Conv2d(shape[0], **self.nn_params)
        c, h, w = shape
        out_h, out_w = (_conv_out(n, i, self.weight_net) for i, n in enumerate((h, w)))
        if out_h < 1 or out_w < 1:
            raise ValueError(f"component {self.name!r}: a {h}x{w} input is too small for {self.nn_params}")
        net = self.weight_net
        # A kernel the size of its input, unpadded, has one output position that sees every input value: the
        # convolution is a matrix product over the flattened input. As one (the CPU's form), forward and backward take
        # about a third of the convolution kernels' time on a CPU (the fast graphs' cnn2: 3x3 input, 3x3 kernel).
        self.covers_input = (
            net.kernel_size == (h, w) and net.padding == (0, 0) and net.dilation == (1, 1) and net.groups == 1
        )
        return (net.out_channels, out_h, out_w)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.covers_input or gpu_forms(x.device):  # a GPU keeps cuDNN's kernel and its fewer launches
            return super()._forward(x)
        net = self.weight_net  # the same parameters either way, so checkpoints do not depend on the form
        out = F.linear(x.flatten(1), net.weight.flatten(1), net.bias)
        return self.nonlinearity(out.view(-1, net.out_channels, 1, 1))


def _conv_out(size: int, dim: int, conv: nn.Conv2d) -> int:
    k, s, p, d = conv.kernel_size[dim], conv.stride[dim], conv.padding[dim], conv.dilation[dim]
    return math.floor((size + 2 * p - d * (k - 1) - 1) / s) + 1


class Flatten(LayerBase):
    def __init__(self, name: str, sources: list[str], context: AgentContext):
        super().__init__(name, sources, context)

    def _make_net(self, in_shapes: list[Shape]) -> Shape:
        return (math.prod(_single_source(self.name, in_shapes)),)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)
