"""``TokenConv``: the first convolution computed straight from the token observation.

The standard encoder is ``_obs_`` (tokens -> dense box ``[C, H, W]``) -> ``obs_normalizer`` (divide each
channel by its feature's normalization) -> ``cnn1`` (a Conv2d). The box is mostly zeros: an 11x11 window
with 30-odd feature channels has about 4,000 cells, of which a navigation observation fills about 70. The
convolution is linear in the box, so its output is a sum over the tokens alone: token ``(location, feature,
value)`` adds ``value / norm[feature] * W[:, feature, kr, kc]`` to each output position whose kernel covers
``location`` at kernel offset ``(kr, kc)``.

``TokenConv`` does exactly that as one sparse-times-dense matrix product: the tokens of a batch form a sparse
``[N, features * cells]`` matrix of normalized values, and a table with a row per (feature, cell) holds the
weights that cell sends to every output position (zero where the kernel does not cover it). The table is a
fixed 0/1 matrix times the convolution's own weight, so gradients flow to the same parameter and
checkpoints are unchanged. For the default agent (5x5 kernel, stride 3, 64 channels) forward and backward
take about a third of the dense path's time on a CPU (box scatter, normalizer and convolution). Without
gradients (rollouts) the table is reused until the weight changes.

On a CPU the product is a sparse CSR matrix (only the valid tokens) times the table. On a GPU the three
components themselves run (``product = "dense"``): a cuDNN convolution over the box is faster there, its
backward above all (on an H200, 8 ms per 16384-step minibatch against 48 ms for the bag form).
``product = "bag"`` computes it as an ``embedding_bag`` over every token slot (empty slots weigh 0), whose
shapes do not depend on the data.

It is the same function as the three components, up to float rounding, for observations with at most one
token per (location, feature), which is what MettaGrid emits. (The dense box keeps one of two duplicate
tokens; this sums them.) ``MettaAgent`` uses it when its graph has that chain and nothing else reads the box;
``MettaAgent.token_conv = None`` switches back to the components.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from metta.agent.lib.nn_layer_library import Conv2d
from metta.agent.lib.obs_token_to_box_shaper import ObsTokenToBoxShaper
from metta.agent.lib.observation_normalizer import ObservationNormalizer
from metta.common.code_paths import gpu_forms


class TokenConv:
    """Computes ``conv``'s output (nonlinearity included) from tokens; holds no parameters of its own."""

    def __init__(self, shaper: ObsTokenToBoxShaper, normalizer: ObservationNormalizer, conv: Conv2d):
        self.shaper, self.normalizer, self.conv = shaper, normalizer, conv
        self.name = conv.name
        net = conv.weight_net
        channels, h, w = shaper.out_shape
        out_channels, out_h, out_w = conv.out_shape
        (kh, kw), (sh, sw), (ph, pw) = net.kernel_size, net.stride, net.padding
        # index[cell, position] = kr * kw + kc of the kernel tap that sees input `cell` from output
        # `position`, or kh * kw (a zero row) when that output's kernel does not cover the cell.
        rows = torch.arange(h).view(h, 1, 1, 1)
        cols = torch.arange(w).view(1, w, 1, 1)
        out_rows = torch.arange(out_h).view(1, 1, out_h, 1)
        out_cols = torch.arange(out_w).view(1, 1, 1, out_w)
        kr = rows + ph - sh * out_rows
        kc = cols + pw - sw * out_cols
        covered = (kr >= 0) & (kr < kh) & (kc >= 0) & (kc < kw)
        index = torch.where(covered, kr * kw + kc, torch.tensor(kh * kw)).reshape(-1)
        # taps_to_table[cell * positions + position, tap] = 1 for the tap that cell feeds at that position.
        self.taps_to_table = torch.zeros(len(index), kh * kw + 1, device=net.weight.device)
        self.taps_to_table[torch.arange(len(index)), index] = 1.0
        self.cells = h * w
        self.channels = channels
        self.out_shape = (out_channels, out_h, out_w)
        self._cache_key: tuple | None = None
        # "sparse", "bag" or "dense" (see the module docstring); None picks by the device: sparse on a CPU, dense
        # (the components themselves) elsewhere (metta.common.code_paths.gpu_forms).
        self.product: str | None = None
        self._cache_table: torch.Tensor | None = None

    @classmethod
    def for_components(cls, components: dict) -> TokenConv | None:
        """A ``TokenConv`` for the graph's ``_obs_`` -> normalizer -> Conv2d chain, or None when the graph has
        no such chain, the convolution is not a plain zero-padded one, or another component reads the box."""
        shaper = components.get("_obs_")
        readers = {name: [c for c in components.values() if name in c.sources] for name in components}
        if not isinstance(shaper, ObsTokenToBoxShaper) or len(readers["_obs_"]) != 1:
            return None
        normalizer = readers["_obs_"][0]
        if not isinstance(normalizer, ObservationNormalizer) or len(readers[normalizer.name]) != 1:
            return None
        conv = readers[normalizer.name][0]
        if not isinstance(conv, Conv2d) or conv.sources != [normalizer.name]:
            return None
        net = conv.weight_net
        if (
            net.groups != 1
            or tuple(net.dilation) != (1, 1)
            or net.padding_mode != "zeros"
            or isinstance(net.padding, str)
        ):
            return None
        return cls(shaper, normalizer, conv)

    def _table(self) -> torch.Tensor:
        """``[channels * cells, positions * out_channels]``: what one unit of each (feature, cell) adds."""
        weight = self.conv.weight_net.weight  # [out, C, kh, kw]
        if self.taps_to_table.device != weight.device:  # the agent was moved after it was built
            self.taps_to_table = self.taps_to_table.to(weight.device)
        if torch.compiler.is_compiling() or (weight.is_cuda and torch.cuda.is_current_stream_capturing()):
            # A compiled graph or a CUDA graph (the rollout step's) computes the table as part of its own work:
            # a cached one would be a constant there, stale after the next optimizer step.
            return self._compute_table(weight)
        key = (weight._version, weight.data_ptr(), weight.device)
        if not torch.is_grad_enabled() and self._cache_key == key and self._cache_table is not None:
            return self._cache_table
        table = self._compute_table(weight)
        if not torch.is_grad_enabled():
            self._cache_key, self._cache_table = key, table
        else:
            self._cache_key, self._cache_table = None, None
        return table

    def _compute_table(self, weight: torch.Tensor) -> torch.Tensor:
        out_channels = weight.shape[0]
        taps = weight.reshape(out_channels, self.channels, -1).permute(1, 2, 0)  # [C, kh*kw, out]
        taps = F.pad(taps, (0, 0, 0, 1))  # the zero tap for uncovered cells
        # A matrix product rather than a gather: its backward is another product, not a slow scatter-add.
        return torch.matmul(self.taps_to_table, taps).reshape(
            self.channels * self.cells, -1
        )  # [C*cells, positions*out]

    def __call__(self, td: dict) -> None:
        tokens = td["x"]
        product = self.product or ("dense" if gpu_forms(tokens.device) else "sparse")
        if product == "dense":  # on a GPU the box and a cuDNN convolution are faster, backward above all
            for component in (self.shaper, self.normalizer, self.conv):
                component(td)
            return
        if product == "sparse" and torch.compiler.is_compiling():
            product = "bag"  # the same product with data-independent shapes, which torch.compile can trace
        n = tokens.shape[0]
        cell, feature = self.shaper.decode(tokens)
        valid = (cell < self.cells) & (feature < self.channels)
        feature = feature.clamp_max(self.channels - 1)
        columns = feature * self.cells + cell
        values = tokens[..., 2].float() * self.normalizer.inverse_norms.view(-1)[feature]
        if product == "sparse":
            out = self._sparse_product(n, columns[valid], values[valid], valid.sum(1))
        else:
            out = self._bag_product(columns, values, valid)
        out_channels, out_h, out_w = self.out_shape
        out = out.view(n, out_h * out_w, out_channels).transpose(1, 2).reshape(n, out_channels, out_h, out_w)
        bias = self.conv.weight_net.bias
        if bias is not None:
            out = out + bias.view(1, -1, 1, 1)
        td[self.name] = self.conv.nonlinearity(out)

    def _sparse_product(
        self, n: int, columns: torch.Tensor, values: torch.Tensor, per_row: torch.Tensor
    ) -> torch.Tensor:
        """CPU: the valid tokens as a sparse CSR matrix times the table (the fastest product on a CPU)."""
        row_starts = torch.zeros(n + 1, dtype=torch.long, device=columns.device)
        torch.cumsum(per_row, 0, out=row_starts[1:])
        with warnings.catch_warnings():  # torch calls sparse CSR "beta"; this product and its backward are tested
            warnings.simplefilter("ignore")
            inputs = torch.sparse_csr_tensor(
                row_starts, columns, values, (n, self.channels * self.cells), check_invariants=False
            )
        return torch.sparse.mm(inputs, self._table())  # [N, positions * out_channels]

    def _bag_product(self, columns: torch.Tensor, values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """GPU: the same product as a weighted bag of table rows per observation. Every slot takes part (an
        empty or dropped token points at row 0 with weight 0), so the shapes never depend on the data: no
        device-to-host synchronisation to count tokens, and fixed shapes for torch.compile."""
        columns = torch.where(valid, columns, 0)
        values = torch.where(valid, values, 0.0)
        return F.embedding_bag(columns, self._table(), per_sample_weights=values, mode="sum")
