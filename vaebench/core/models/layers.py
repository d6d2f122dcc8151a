"""Member-aware layers: each built-in layer runs one model or M models stacked (HFTA-style).

A layer is built as its ``torch.nn`` parent builds it (same init, same draws from the global
generator, same parameter names), so a solo model is exactly the ``torch.nn`` model and runs the
plain op. ``stack_members(models)`` turns M solo models of one architecture into one model whose
member-aware layers hold each parameter as ``[M, *solo_shape]`` and run all members in one op:

- ``Linear``: one ``torch.baddbmm`` over [M, B, in] x [M, in, out] (the weight kept transposed:
  baddbmm takes it as it is and its gradient comes out contiguous);
- ``Conv2d`` / ``ConvTranspose2d``: one grouped convolution, the members as groups. Inside a conv
  stack activations stay grouped, [B, M*C, H, W]; a 5-d [M, B, C, H, W] input is grouped on entry
  and ``members_first`` (or ``Flatten``) ungroups;
- ``Flatten``: the event dims of [M, B, ...] (of [B, ...] solo);
- ``Embedding``: one lookup in the members' tables laid end to end;
- ``GRU`` / ``LSTM`` (one layer, batch first): the cell's equations over the time steps, one
  ``torch.baddbmm`` per step (``torch.func.vmap`` has no batching rule for the fused RNN ops).

Modules with parameters of their own (``vaebench.core.models.vae.LinearEncoder``) derive from
``MemberAware`` too; any other module holding parameters makes ``stack_members`` refuse
(``NotPackable``), and such a model packs through the generic path (vaebench.core.members).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class NotPackable(TypeError):
    """A model the fused path cannot stack (a layer that is not member-aware, a buffer)."""


class MemberAware:
    """Mixin: ``members`` is None for a solo layer, M once stacked."""

    members: int | None = None

    def stack_from(self, layers: list[nn.Module]) -> None:
        """Hold the parameters of ``layers`` (this layer's counterparts in M solo models) stacked."""
        for name, _ in list(self.named_parameters(recurse=False)):
            stacked = torch.stack([self.stacked_layout(name, m.get_parameter(name).detach()) for m in layers])
            setattr(self, name, nn.Parameter(stacked.contiguous()))
        self.members = len(layers)

    def stacked_layout(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """A member's parameter as it is stacked (transposed for Linear's weight)."""
        return value

    def solo_layout(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """A member's slice of a stacked parameter, back in the solo layout."""
        return value


def _grouped(h: torch.Tensor) -> torch.Tensor:
    """[M, B, C, H, W] -> [B, M*C, H, W]: members become the groups of a grouped convolution."""
    M, B, C, H, W = h.shape
    return h.transpose(0, 1).reshape(B, M * C, H, W)


def members_first(h: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """The output of a conv ``layer``: as it is solo; [B, M*C, H, W] -> [M, B, C, H, W] stacked."""
    M = getattr(layer, "members", None)
    if M is None or h.dim() != 4:  # solo, already [M, B, C, H, W], or vectors [M, B, n] (an MLP on vector data)
        return h
    B, MC, H, W = h.shape
    return h.view(B, M, MC // M, H, W).transpose(0, 1)


class Linear(MemberAware, nn.Linear):
    def stacked_layout(self, name: str, value: torch.Tensor) -> torch.Tensor:
        return value.T if name == "weight" else value

    solo_layout = stacked_layout

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.members is None:
            return F.linear(h, self.weight, self.bias)
        wt, shape = self.weight, h.shape  # wt [M, in, out]; h [M, ..., in]
        out = torch.baddbmm(self.bias.unsqueeze(1), h.reshape(shape[0], -1, shape[-1]), wt)
        return out.view(*shape[:-1], wt.shape[2])


class Conv2d(MemberAware, nn.Conv2d):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.members is None:
            return super().forward(h)
        h = _grouped(h) if h.dim() == 5 else h
        w, b = self.weight.flatten(0, 1), self.bias.flatten()
        return F.conv2d(h, w, b, self.stride, self.padding, self.dilation, groups=self.members)


class ConvTranspose2d(MemberAware, nn.ConvTranspose2d):
    def forward(self, h: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if self.members is None:
            return super().forward(h, output_size=output_size)
        h = _grouped(h) if h.dim() == 5 else h
        (k,), (s,), (pad,) = self.kernel_size[:1], self.stride[:1], self.padding[:1]
        natural = (h.shape[-1] - 1) * s - 2 * pad + k  # the output size without output_padding
        extra = 0 if output_size is None else output_size[-1] - natural
        w, b = self.weight.flatten(0, 1), self.bias.flatten()
        return F.conv_transpose2d(h, w, b, s, pad, output_padding=extra, groups=self.members)


class Flatten(MemberAware, nn.Flatten):
    """nn.Flatten() solo (from dim 1); stacked, from dim 2 of [M, B, ...] (ungrouping a conv stack's output)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.members is None:
            return super().forward(h)
        return members_first(h, self).flatten(2)


class Embedding(MemberAware, nn.Embedding):
    """nn.Embedding solo; stacked, weight [M, V, E] and ids [M, ...]: one lookup in the members'
    tables laid end to end. The padding row gets no gradient, as nn.Embedding's ``padding_idx``."""

    def stack_from(self, layers: list[nn.Module]) -> None:
        if self.max_norm is not None or self.sparse or self.scale_grad_by_freq:
            raise NotPackable("Embedding with max_norm, sparse or scale_grad_by_freq is not member-aware")
        super().stack_from(layers)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.members is None:
            return super().forward(ids)
        w = self.weight
        M, V = w.shape[:2]
        if self.padding_idx is not None:  # the padding row's value, without its gradient
            pad = torch.arange(V, device=w.device) == self.padding_idx
            w = torch.where(pad[:, None], w.detach(), w)
        offsets = torch.arange(M, device=ids.device).view(M, *[1] * (ids.dim() - 1)) * V
        return F.embedding(ids + offsets, w.flatten(0, 1))


class _RNN(MemberAware):
    """A one-layer, batch-first, unidirectional GRU/LSTM: solo the torch.nn op itself; stacked, its
    equations over the time steps with a leading member axis (x [M, B, T, in], states [1, M, B, H]):
    the inputs' projection as one batched matmul, then ``baddbmm`` per step for the state.
    Weights are kept transposed ([M, in, G*H]), as Linear's."""

    def stack_from(self, layers: list[nn.Module]) -> None:
        if self.num_layers != 1 or self.bidirectional or not self.batch_first or not self.bias or self.proj_size:
            raise NotPackable(f"{type(self).__name__}: only one layer, batch_first, unidirectional, with bias stacks")
        super().stack_from(layers)

    def stacked_layout(self, name: str, value: torch.Tensor) -> torch.Tensor:
        return value.T if name.startswith("weight_") else value

    solo_layout = stacked_layout


def _input_steps(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The inputs' projection x W + b of every time step at once (x [M, B, T, in], w [M, in, G],
    b [M, G]), then one [M, B, G] per step. Unbind, never indexing, along time: an index's backward
    fills a zero tensor the size of the whole input at every step (40% of a packed step, measured)."""
    gi = torch.baddbmm(b.unsqueeze(1), x.reshape(x.shape[0], -1, x.shape[-1]), w)
    return gi.view(*x.shape[:-1], -1).unbind(-2)


class GRU(_RNN, nn.GRU):
    def forward(self, x: torch.Tensor, hx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.members is None:
            return super().forward(x, hx)
        H = self.hidden_size
        h = x.new_zeros(*x.shape[:-2], H) if hx is None else hx[0]
        # torch's gates: r, z = sigmoid(W_i x + b_i + W_h h + b_h), n = tanh(W_in x + b_in + r (W_hn h + b_hn)).
        # Each step's r, z input term (both biases in it) is the additive term of its baddbmm: no add,
        # no split of the gates (measured: a packed step 28% faster than one baddbmm split in three)
        w_ih, w_hh, b_ih, b_hh = self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0
        rz_in = _input_steps(x, w_ih[:, :, : 2 * H], b_ih[:, : 2 * H] + b_hh[:, : 2 * H])
        n_in = _input_steps(x, w_ih[:, :, 2 * H :], b_ih[:, 2 * H :])
        w_rz, w_n = w_hh[:, :, : 2 * H].contiguous(), w_hh[:, :, 2 * H :].contiguous()
        b_n = b_hh[:, 2 * H :].unsqueeze(1)
        outs = []
        for g_rz, g_n in zip(rz_in, n_in):
            r, z = torch.sigmoid(torch.baddbmm(g_rz, h, w_rz)).chunk(2, -1)
            n = torch.tanh(g_n + r * torch.baddbmm(b_n, h, w_n))
            h = n + z * (h - n)  # (1 - z) n + z h
            outs.append(h)
        return torch.stack(outs, -2), h[None]


class LSTM(_RNN, nn.LSTM):
    def forward(self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None):
        if self.members is None:
            return super().forward(x, hx)
        if hx is None:
            h = c = x.new_zeros(*x.shape[:-2], self.hidden_size)
        else:
            h, c = hx[0][0], hx[1][0]
        w = self.weight_hh_l0
        outs = []
        for g in _input_steps(x, self.weight_ih_l0, self.bias_ih_l0 + self.bias_hh_l0):  # torch's gates i, f, g, o
            i, f, gg, o = torch.baddbmm(g, h, w).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs, -2), (h[None], c[None])


# ----------------------------------------------------------------------- stacking


def stack_members(models: list[nn.Module]) -> nn.Module:
    """One model running ``models`` (M solo models of one architecture) as stacked members: a copy
    of the first whose member-aware layers hold every member's parameters. Raises NotPackable when a
    module holding parameters is not member-aware, or the model has buffers."""
    template = models[0]
    if any(True for _ in template.buffers()):
        raise NotPackable("the model has buffers; the fused path stacks parameters only")
    packed = copy.deepcopy(template)
    for name, module in packed.named_modules():
        if isinstance(module, MemberAware):
            module.stack_from([m.get_submodule(name) for m in models])
        elif any(True for _ in module.parameters(recurse=False)):
            raise NotPackable(f"{type(module).__name__} at {name or 'the root'} is not member-aware")
    return packed


def _aware(model: nn.Module) -> list[tuple[str, MemberAware]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MemberAware)]


def keep_members(model: nn.Module, positions: list[int]) -> None:
    """Keep only the members at ``positions`` (in that order); the others' slices are freed."""
    for _, module in _aware(model):
        for p in module.parameters(recurse=False):
            p.data = p.data.index_select(0, torch.tensor(positions, dtype=torch.long, device=p.device))
            p.grad = None
        module.members = len(positions)


def member_state(model: nn.Module, i: int) -> dict[str, torch.Tensor]:
    """Member i's parameters in the solo model's state_dict layout."""
    out = {}
    for prefix, module in _aware(model):
        for name, p in module.named_parameters(recurse=False):
            out[f"{prefix}.{name}" if prefix else name] = module.solo_layout(name, p[i].detach()).contiguous().clone()
    return out
