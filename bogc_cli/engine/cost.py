"""What a model costs: parameters and forward FLOPs per sample.

- ``parameters``: every parameter of the model (encoders, fusion head, unimodal heads), counted once;
- ``forward_flops_per_sample``: ``torch.utils.flop_counter.FlopCounterMode`` over one eval-mode forward
  of the full model (all modalities present) on a batch of rows, divided by the rows. It counts the
  matrix products and convolutions (2 FLOPs per multiply-add) and nothing else (activations,
  normalisation and pooling are left out, as in the usual "FLOPs" of the literature).

The median training step time and peak memory, the other two costs reported, are measured during
training (``step_time_ms_median``, ``peak_memory_mb`` in eval.json; engine/trainer.py).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode

from bogc_cli.models.multimodal import MultimodalModel


def parameter_count(model: torch.nn.Module) -> int:
    """Number of scalars in the model's parameters (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _eager(model: torch.nn.Module):
    """Run compiled modules (``train.compile``) eagerly while counting, so the counter sees the operators one
    by one; a model without any needs nothing (and does not import ``torch._dynamo``, seconds)."""
    compiled = any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())
    stance = getattr(torch.compiler, "set_stance", None) if compiled else None
    return stance("force_eager") if stance is not None else nullcontext()


@torch.no_grad()
def forward_flops_per_sample(model: MultimodalModel, inputs: dict[str, torch.Tensor]) -> float:
    """FLOPs of one forward of ``model`` on ``inputs`` (``{m: [B, *shape_m]}``), divided by ``B``."""
    was_training = model.training
    model.eval()
    rows = next(iter(inputs.values())).shape[0]
    counter = FlopCounterMode(display=False)
    try:
        with _eager(model), counter:
            model(inputs)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / rows


__all__ = ["forward_flops_per_sample", "parameter_count"]
