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
- ``Flatten``: the event dims of [M, B, ...] (of [B, ...] solo).

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
