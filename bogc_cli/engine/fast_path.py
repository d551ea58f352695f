"""The CUDA fast path: worker count, channels-last weights, compiled encoders, fused optimiser kernels.

Each is a recipe key of ``train`` (``num_workers``, ``channels_last``, ``compile``,
``fused_optimizer``); ``auto`` turns it on where it pays (CUDA) and off on the CPU. None of them
changes the function a run computes, only how fast: the bf16 autocast of ``train.precision`` is the
one that changes arithmetic (docs/performance.md shows results stay within seed noise).
"""

from __future__ import annotations

import os

import torch

from bogc_cli.engine.runtime import resolved_precision
from bogc_cli.models.multimodal import MultimodalModel
from bogc_cli.recipe import TrainBlock


def _on_cuda(setting: bool | str, device: torch.device) -> bool:
    return device.type == "cuda" if setting == "auto" else bool(setting)


def worker_count(setting: int | str, device: torch.device, processes_per_node: int = 1) -> int:
    """DataLoader workers per process. ``auto``: 0 on the CPU, where batches are slices of memory-mapped
    arrays and workers would only compete with training for the cores; on CUDA, enough to stay ahead
    of the GPU (up to 8), leaving one core per process for the training loop."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // max(1, processes_per_node) - 1))


def fused_optimizer(cfg: TrainBlock, device: torch.device) -> bool:
    return _on_cuda(cfg.fused_optimizer, device)


def prepare_model(model: MultimodalModel, cfg: TrainBlock, device: torch.device) -> MultimodalModel:
    """Move the model to ``device`` and apply ``channels_last`` and ``compile`` (in place: the
    state_dict keeps its keys, so checkpoints load with or without them)."""
    model = model.to(device)
    if _on_cuda(cfg.channels_last, device):
        # convolutions follow their weights' layout, so inputs need no conversion
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile:
        for encoder in model.encoders.values():
            encoder.compile()
    return model


def fast_path_summary(cfg: TrainBlock, device: torch.device, workers: int) -> dict:
    """What the run used, for environment.json."""
    return {"precision": resolved_precision(device, cfg.precision), "num_workers": workers, "channels_last": _on_cuda(cfg.channels_last, device), "compile": cfg.compile,
            "fused_optimizer": fused_optimizer(cfg, device)}
