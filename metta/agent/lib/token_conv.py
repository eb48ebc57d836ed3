"""``TokenConv``: the first convolution computed straight from the token observation.

The standard encoder is ``_obs_`` (tokens -> dense box ``[C, H, W]``) -> ``obs_normalizer`` (divide each
channel by its feature's normalization) -> ``cnn1`` (a Conv2d). The box is mostly zeros: an 11x11 window
with 30-odd feature channels has about 4,000 cells, of which a navigation observation fills about 70. The
convolution is linear in the box, so its output is a sum over the tokens alone: token ``(location, feature,
value)`` adds ``value / norm[feature] * W[:, feature, kr, kc]`` to each output position whose kernel covers
``location`` at kernel offset ``(kr, kc)``.

``TokenConv`` does exactly that, in one of three forms (``product``):

- ``"sparse"`` (a CPU's): a sparse-times-dense matrix product over patches. Row ``position * N + n`` of a
  sparse ``[positions * N, features * taps]`` matrix holds the tokens of observation ``n`` that output
  ``position``'s kernel covers, each at the column of its feature and kernel tap, and the product with the
  weight laid out as ``[features * taps, out_channels]`` is the output. A token enters once per kernel
  covering its cell (for a 5x5 kernel at stride 3 on 11x11, 1 to 4 times, 1.9 on average over the cells).
  ``_patches`` builds the matrix in two passes over the token slots (no sort), and the backward builds its
  transpose with a counting sort (``_PatchProduct``). For the fast graphs' first convolution (5x5 kernel,
  stride 3, 64 channels), forward and backward on 2048 navigation observations take 8 to 11 ms on this
  project's 2-core CPU, the dense path (box scatter, normalizer and convolution) 45 to 57 ms and the bag form
  about 50 ms (``python benchmarks/learn_micro.py --rows 128 --bptt 16``, ``first_conv``).
- ``"dense"`` (a GPU's): the three components themselves: a cuDNN convolution over the box is faster there,
  its backward above all (on an H200, 8 ms per 16384-step minibatch against 48 ms for the bag form).
- ``"bag"``: an ``embedding_bag`` over every token slot (empty slots weigh 0) of a table with a row per
  (feature, cell) holding the weights that cell sends to every output position; its shapes do not depend on
  the data, so torch.compile traces it (a compiled policy runs it in place of the sparse form). The table is a
  fixed 0/1 matrix times the convolution's weight; without gradients (rollouts) it is reused until the weight
  changes.

Every form computes from the convolution's own weight, so gradients flow to the same parameter and
checkpoints are unchanged.

It is the same function as the three components, up to float rounding, for observations with at most one
token per (location, feature), which is what MettaGrid emits. (The dense box keeps one of two duplicate
tokens; this sums them.) ``MettaAgent`` uses it when its graph has that chain and nothing else reads the box;
``MettaAgent.token_conv = None`` switches back to the components.
"""

from __future__ import annotations

import warnings

import numba
import numpy as np
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
        # The sparse product's patches: cell c is covered by the kernels of cover_count[c] output positions,
        # cover_position[c, :count], through the taps cover_tap[c, :count] (positions ascending).
        covered_cells = covered.reshape(h * w, out_h * out_w).numpy()
        taps_of_cells = index.view(h * w, out_h * out_w).numpy()  # the tap where covered
        self.cover_count = covered_cells.sum(1).astype(np.int64)
        self.cover_position = np.zeros((h * w, max(1, int(self.cover_count.max()))), dtype=np.int64)
        self.cover_tap = np.zeros_like(self.cover_position)
        for cell, positions in enumerate(covered_cells):
            where = np.flatnonzero(positions)
            self.cover_position[cell, : where.size] = where
            self.cover_tap[cell, : where.size] = taps_of_cells[cell, where]
        self.taps = kh * kw
        self.positions = out_h * out_w
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
        out_channels, out_h, out_w = self.out_shape
        if product == "sparse":
            out = self._sparse_product(tokens)  # [positions * N, out]
            out = out.view(self.positions, n, out_channels).permute(1, 2, 0)
        else:
            cell, feature = self.shaper.decode(tokens)
            valid = (cell < self.cells) & (feature < self.channels)
            feature = feature.clamp_max(self.channels - 1)
            values = tokens[..., 2].float() * self.normalizer.inverse_norms.view(-1)[feature]
            out = self._bag_product(feature * self.cells + cell, values, valid)  # [N, positions * out]
            out = out.view(n, self.positions, out_channels).transpose(1, 2)
        out = out.reshape(n, out_channels, out_h, out_w)
        bias = self.conv.weight_net.bias
        if bias is not None:
            out = out + bias.view(1, -1, 1, 1)
        td[self.name] = self.conv.nonlinearity(out)

    def _sparse_product(self, tokens: torch.Tensor) -> torch.Tensor:
        """CPU: ``[positions * N, channels * taps]`` patches times the weight as ``[channels * taps, out]``. Row
        ``position * N + n`` of the patches holds the tokens of observation ``n`` that output ``position``'s kernel
        covers, each at the column of its feature and tap (``_patches``)."""
        if tokens.device.type != "cpu":
            raise ValueError(f"TokenConv product='sparse' runs on the CPU; for tokens on {tokens.device} use 'dense'")
        n = tokens.shape[0]
        row_starts, columns, values = _patches(
            tokens.reshape(n, -1, tokens.shape[-1]).to(torch.uint8).contiguous().numpy(),
            self.shaper.location_offset.numpy(),
            self.shaper.feature_remap.numpy(),
            self.normalizer.inverse_norms.reshape(-1).numpy(),
            self.cover_count,
            self.cover_position,
            self.cover_tap,
            self.cells,
            self.taps,
            self.positions,
        )
        weight = self.conv.weight_net.weight  # [out, C, kh, kw]
        weights = weight.permute(1, 2, 3, 0).reshape(self.channels * self.taps, weight.shape[0])
        return _PatchProduct.apply(
            weights, torch.from_numpy(row_starts), torch.from_numpy(columns), torch.from_numpy(values)
        )

    def _bag_product(self, columns: torch.Tensor, values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The product as a weighted bag of table rows per observation (torch.compile's form, any device). Every
        slot takes part (an empty or dropped token points at row 0 with weight 0), so the shapes never depend on
        the data: no device-to-host synchronisation to count tokens, and fixed shapes for torch.compile."""
        columns = torch.where(valid, columns, 0)
        values = torch.where(valid, values, 0.0)
        return F.embedding_bag(columns, self._table(), per_sample_weights=values, mode="sum")


def _csr(row_starts: torch.Tensor, columns: torch.Tensor, values: torch.Tensor, num_columns: int) -> torch.Tensor:
    with warnings.catch_warnings():  # torch calls sparse CSR "beta"; this product and its backward are tested
        warnings.simplefilter("ignore")
        shape = (row_starts.shape[0] - 1, num_columns)
        return torch.sparse_csr_tensor(row_starts, columns, values, shape, check_invariants=False)


class _PatchProduct(torch.autograd.Function):
    """``patches @ weights`` for the patches as CSR arrays, and the weights' gradient as ``patches^T @ grad`` with
    the transpose built as a CSR matrix of its own (``_transposed``, a counting sort). torch's backward of a CSR
    product transposes with a general sort and took about three times as long on the CPU recipe's minibatches."""

    @staticmethod
    def forward(ctx, weights, row_starts, columns, values):
        ctx.save_for_backward(row_starts, columns, values)
        ctx.num_weight_rows = weights.shape[0]
        return torch.sparse.mm(_csr(row_starts, columns, values, weights.shape[0]), weights)

    @staticmethod
    def backward(ctx, grad):
        row_starts, columns, values = ctx.saved_tensors
        arrays = _transposed(row_starts.numpy(), columns.numpy(), values.numpy(), ctx.num_weight_rows)
        transposed = _csr(*(torch.from_numpy(a) for a in arrays), row_starts.shape[0] - 1)
        return torch.sparse.mm(transposed, grad.contiguous()), None, None, None


@numba.njit(cache=True, nogil=True)
def _patches(
    tokens,
    location_offset,
    feature_remap,
    inverse_norms,
    cover_count,
    cover_position,
    cover_tap,
    cells,
    taps,
    positions,
):
    """The patches of ``tokens`` (uint8 ``[N, slots, 3]``) as CSR arrays ``(row_starts, columns, values)``, rows
    ``position * N + n``. Two passes over the token slots (count the entries of each row, then place them), so
    no sort: empty slots, cells off the window and dropped features (``feature_remap`` >= channels) are
    skipped, and a token enters once per kernel covering its cell."""
    n, slots = tokens.shape[0], tokens.shape[1]
    channels = inverse_norms.shape[0]
    row_starts = np.zeros(positions * n + 1, dtype=np.int64)
    for i in range(n):
        for s in range(slots):
            cell = location_offset[tokens[i, s, 0]]
            if cell < cells and feature_remap[tokens[i, s, 1]] < channels:
                for j in range(cover_count[cell]):
                    row_starts[cover_position[cell, j] * n + i + 1] += 1
    for r in range(positions * n):
        row_starts[r + 1] += row_starts[r]
    columns = np.empty(row_starts[-1], dtype=np.int64)
    values = np.empty(row_starts[-1], dtype=np.float32)
    next_entry = row_starts[:-1].copy()
    for i in range(n):
        for s in range(slots):
            cell = location_offset[tokens[i, s, 0]]
            feature = np.int64(feature_remap[tokens[i, s, 1]])
            if cell < cells and feature < channels:
                value = np.float32(tokens[i, s, 2]) * inverse_norms[feature]
                for j in range(cover_count[cell]):
                    row = cover_position[cell, j] * n + i
                    columns[next_entry[row]] = feature * taps + cover_tap[cell, j]
                    values[next_entry[row]] = value
                    next_entry[row] += 1
    return row_starts, columns, values


@numba.njit(cache=True, nogil=True)
def _transposed(row_starts, columns, values, num_columns):
    """The CSR arrays of the transpose of a CSR matrix with ``num_columns`` columns (a counting sort by column,
    which keeps each new row's entries in ascending column order)."""
    starts = np.zeros(num_columns + 1, dtype=np.int64)
    for k in range(columns.shape[0]):
        starts[columns[k] + 1] += 1
    for c in range(num_columns):
        starts[c + 1] += starts[c]
    rows = np.empty(columns.shape[0], dtype=np.int64)
    out_values = np.empty(columns.shape[0], dtype=np.float32)
    next_entry = starts[:-1].copy()
    for r in range(row_starts.shape[0] - 1):
        for k in range(row_starts[r], row_starts[r + 1]):
            c = columns[k]
            rows[next_entry[c]] = r
            out_values[next_entry[c]] = values[k]
            next_entry[c] += 1
    return starts, rows, out_values
