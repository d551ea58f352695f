"""Per-source gradients in flat buffers, from the model's declared structure.

A *block* is the set of parameter tensors touched by the same sources (encoder m: fused and
m; fusion head: fused; unimodal head m: m). Each source's flat gradient lists its blocks in a
fixed order, so one block is one contiguous slice of every source vector that touches it:
stacking those slices gives the ``[S, N]`` matrix a calibration rule needs, with no copying
per tensor. Methods that need per-loss gradients (bogc, mmpareto, cggm, ...) use this.

``gradients`` takes one backward per *pass*, not per source: sources whose parameter sets are
disjoint (every modality's loss with ``heads`` unimodal logits: encoder m and head m) share one
backward of their summed losses, whose gradient on source m's parameters is exactly L_m's. So a
step costs two backward calls (fusion loss; all modality losses) instead of 1 + M.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bogc_cli.engine.distributed import all_reduce_flat
from bogc_cli.fusion.calibration import Segments
from bogc_cli.models.multimodal import MultimodalModel


@dataclass
class Block:
    """Tensors sharing one source set. ``slices[s]``: where the block lies in source s's flat vector."""

    sources: tuple[str, ...]
    params: list[nn.Parameter]
    names: list[str]  # the param groups it came from (for diagnostics)
    slices: dict[str, slice]
    segments: Segments
    numel: int


def global_batch_gradients(flats: dict[str, torch.Tensor], share: float) -> dict[str, torch.Tensor]:
    """Per-source gradients of the global batch from each process's (of ``share`` of its rows): one collective."""
    order = list(flats)
    return dict(zip(order, all_reduce_flat([flats[s] * share for s in order])))


class GradientSources:
    """Which parameters each loss touches, and their per-source gradients as flat vectors."""

    def __init__(self, model: MultimodalModel):
        by_sources: dict[tuple[str, ...], tuple[list[nn.Parameter], list[str]]] = {}
        for group in model.param_groups():
            params = [p for p in group.params if p.requires_grad]
            if not params:
                continue
            entry = by_sources.setdefault(tuple(group.sources), ([], []))
            entry[0].extend(params)
            entry[1].append(group.name)
        self.sources: list[str] = []
        for srcs in by_sources:
            self.sources += [s for s in srcs if s not in self.sources]
        self.params: dict[str, list[nn.Parameter]] = {s: [] for s in self.sources}
        offsets = {s: 0 for s in self.sources}
        like = next(model.parameters())
        # statistics in float32 at least (bf16/fp16 grads are too coarse for variances), float64 if the model is
        self.dtype = torch.promote_types(like.dtype, torch.float32)
        self.blocks: list[Block] = []
        for srcs, (params, names) in by_sources.items():
            numel = sum(p.numel() for p in params)
            slices = {}
            for s in srcs:
                slices[s] = slice(offsets[s], offsets[s] + numel)
                offsets[s] += numel
                self.params[s].extend(params)
            seg = Segments.from_numels([p.numel() for p in params], like.detach().to(self.dtype))
            self.blocks.append(Block(srcs, params, names, slices, seg, numel))
        self.sizes = offsets
        # passes: greedy groups of sources whose parameter sets are pairwise disjoint (in source order)
        self.passes: list[list[str]] = []
        taken: list[set[int]] = []
        for src in self.sources:
            ids = {id(p) for p in self.params[src]}
            for group, used in zip(self.passes, taken):
                if not used & ids:
                    group.append(src)
                    used |= ids
                    break
            else:
                self.passes.append([src])
                taken.append(set(ids))

    def gradients(self, losses: dict[str, torch.Tensor], retain_graph: bool = False,
                  on_pass=None) -> dict[str, torch.Tensor]:
        """Flat gradient ``[n_s]`` of each source's loss w.r.t. the parameters it touches (``self.dtype``).

        ``losses``: one scalar per source (all of ``self.sources``, or a subset). One backward per pass;
        ``on_pass(group)`` (optional) is called before each with the pass's sources."""
        flats = {}
        for group, flat in self.pass_gradients(losses, retain_graph, on_pass):
            flats.update(self.split(group, flat))
        return {s: flats[s] for s in losses}

    def pass_gradients(self, losses: dict[str, torch.Tensor], retain_graph: bool = False, on_pass=None
                       ) -> list[tuple[list[str], torch.Tensor]]:
        """``gradients`` before the split: per pass, its sources and their flat gradients one after another."""
        out = []
        passes = [[s for s in group if s in losses] for group in self.passes]
        passes = [group for group in passes if group]
        for i, group in enumerate(passes):
            if on_pass is not None:
                on_pass(group)
            params = [p for s in group for p in self.params[s]]
            total = losses[group[0]] if len(group) == 1 else torch.stack([losses[s] for s in group]).sum()
            grads = torch.autograd.grad(total, params, retain_graph=retain_graph or i < len(passes) - 1,
                                        allow_unused=True)
            flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
            out.append((group, flat if flat.dtype == self.dtype else flat.to(self.dtype)))
        return out

    def split(self, group: list[str], flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """A pass's flat vector (its sources' flats one after another) as views per source."""
        if len(group) == 1:
            return {group[0]: flat}
        return dict(zip(group, flat.split([self.sizes[s] for s in group])))

    def stack(self, flats: dict[str, torch.Tensor], block: Block) -> torch.Tensor:
        """``[S, N]``: the block's slice of each of its sources' flat vectors."""
        return torch.stack([flats[s][block.slices[s]] for s in block.sources])

    @staticmethod
    def assign(block: Block, update: torch.Tensor) -> None:
        """Write a flat update ``[N]`` into the block's ``p.grad``."""
        offset = 0
        for p in block.params:
            n = p.numel()
            g = update[offset:offset + n].view_as(p)
            p.grad = g if g.dtype == p.dtype else g.to(p.dtype)
            offset += n
