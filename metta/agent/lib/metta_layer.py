"""The two base classes of the component graph: ``LayerBase`` (named, with sources) and ``ParamLayer``.

A component reads its sources' outputs from the shared dict ``td`` and writes its own under its name.
``setup`` is called once, in dependency order, with the per-sample output shapes of the sources (batch
dimension excluded), so every layer sizes itself from the env instead of from hard-coded numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

Shape = tuple[int, ...]


@dataclass(frozen=True)
class AgentContext:
    """What every component may need to know about the env and the agent (upstream's "agent attributes")."""

    obs_width: int
    obs_height: int
    feature_normalizations: dict[int, float]
    clip_range: float


class LayerBase(nn.Module):
    """A named node of the component graph. Subclasses implement ``_make_net`` and ``_forward``."""

    def __init__(self, name: str, sources: list[str], context: AgentContext):
        super().__init__()
        self.name = name
        self.sources = list(sources)
        self.context = context
        self.out_shape: Shape = ()
        self.ready = False

    def setup(self, in_shapes: list[Shape]) -> None:
        self.in_shapes = list(in_shapes)
        self.out_shape = self._make_net(self.in_shapes)
        self.ready = True

    def _make_net(self, in_shapes: list[Shape]) -> Shape:
        raise NotImplementedError

    def forward(self, td: dict) -> None:
        td[self.name] = self._forward(*(td[s] for s in self.sources))

    def _forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


_NONLINEARITIES: dict[str, type[nn.Module]] = {
    "nn.ReLU": nn.ReLU,
    "nn.Tanh": nn.Tanh,
    "nn.GELU": nn.GELU,
    "nn.ELU": nn.ELU,
    "nn.SiLU": nn.SiLU,
}


class ParamLayer(LayerBase):
    """A layer with one weight matrix: initialization, weight clipping, L2-to-init, weight metrics.

    ``weight_net`` holds the weight and bias; the optional nonlinearity runs after it. The L2-init anchor
    ``initial_weight`` is a buffer (saved with the state dict, so a resumed run keeps its anchor) and the
    loss is computed on the live parameter so it has a gradient (upstream computed it on ``.data``).
    """

    def __init__(
        self,
        name: str,
        sources: list[str],
        context: AgentContext,
        nonlinearity: str | None = "nn.ReLU",
        initialization: str = "Orthogonal",
        clip_scale: float = 1.0,
        l2_init_scale: float = 1.0,
        analyze_weights: bool = True,
    ):
        super().__init__(name, sources, context)
        if nonlinearity is not None and nonlinearity not in _NONLINEARITIES:
            raise ValueError(
                f"component {name!r}: nonlinearity={nonlinearity!r} is unknown; use one of {sorted(_NONLINEARITIES)} "
                "or null"
            )
        self.nonlinearity_name = nonlinearity
        self.initialization = initialization
        self.clip_scale = float(clip_scale)
        self.l2_init_scale = float(l2_init_scale)
        self.analyze_weights = bool(analyze_weights)

    def setup(self, in_shapes: list[Shape]) -> None:
        super().setup(in_shapes)
        self.nonlinearity = _NONLINEARITIES[self.nonlinearity_name]() if self.nonlinearity_name else nn.Identity()
        self._initialize_weights()
        w = self.weight_net.weight
        self.register_buffer("initial_weight", w.detach().clone())
        # Clipping is relative to the largest initial weight, so it means the same for every layer width.
        self.register_buffer("largest_initial_weight", w.detach().abs().max().clone())

    def _initialize_weights(self) -> None:
        w = self.weight_net.weight
        fan_in = w[0].numel()
        kind = self.initialization.lower()
        if kind == "orthogonal":
            # Gain sqrt(2) in front of ReLU and Tanh (the usual PPO init; upstream used it for Tanh only):
            # with gain 1 the sparse token box shrinks layer by layer and the LSTM sees almost no signal.
            nn.init.orthogonal_(w, gain=math.sqrt(2) if self.nonlinearity_name in ("nn.Tanh", "nn.ReLU") else 1.0)
        elif kind == "xavier":
            nn.init.xavier_uniform_(w)
        elif kind == "normal":
            nn.init.normal_(w, std=1.0 / math.sqrt(fan_in))
        elif kind == "max_0_01":
            nn.init.orthogonal_(w)
            with torch.no_grad():
                w.mul_(0.01 / w.abs().max())
        else:
            raise ValueError(
                f"component {self.name!r}: initialization={self.initialization!r} is unknown; "
                "use Orthogonal, xavier, normal or max_0_01"
            )
        if self.weight_net.bias is not None:
            nn.init.zeros_(self.weight_net.bias)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinearity(self.weight_net(x))

    def clip_weights(self) -> None:
        if self.context.clip_range <= 0:
            return
        limit = self.largest_initial_weight * (self.context.clip_range * self.clip_scale)  # a tensor: no sync
        with torch.no_grad():
            self.weight_net.weight.clamp_(min=-limit, max=limit)

    def l2_init_loss(self) -> torch.Tensor:
        return ((self.weight_net.weight - self.initial_weight) ** 2).sum() * self.l2_init_scale

    def update_l2_init_weight_copy(self, alpha: float = 0.9) -> None:
        with torch.no_grad():
            self.initial_weight.mul_(alpha).add_(self.weight_net.weight, alpha=1.0 - alpha)
