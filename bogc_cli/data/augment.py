"""Training augmentation on the device, one batched call per modality (``train.augment``).

The reference implementations decode and crop every JPEG with PIL in DataLoader workers, so
their GPUs wait on the CPU. Here frames stay uint8 in the prepared cache, reach the device
un-augmented, and are augmented there for the whole batch at once:

- ``image`` ``[B, C, H, W]`` and ``video`` ``[B, T, C, H, W]``: random resized crop (an area
  fraction from ``crop_scale`` and an aspect ratio from ``crop_ratio``, resized back to H x W with
  bilinear sampling, as torchvision's ``RandomResizedCrop``) and a horizontal flip with probability
  1/2 (``flip``). A clip's frames share one crop and one flip, so motion stays coherent, unless
  ``per_frame`` (the reference CREMA-D loader transforms each frame on its own).
- ``audio`` spectrograms ``[B, C, F, T]``: SpecAugment-style masks, ``masks`` bands of up to
  ``freq_mask`` frequency bins and ``masks`` of up to ``time_mask`` frames set to zero, drawn
  independently per sample.

Parameters come from a generator of the augmenter's own (on the device), saved in checkpoints,
so a resumed run draws the same crops; torchaudio's masking draws from the global generator,
which is why the masks are drawn here.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from bogc_cli.data.loader import Batch
from bogc_cli.recipe import AugmentBlock


def crop_flip_grid(n: int, scale: tuple[float, float] | None, ratio: tuple[float, float], flip: bool,
                   generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Affine matrices ``[n, 2, 3]`` (normalised coordinates) of per-sample random resized crops and flips.

    A crop of area fraction ``a`` and aspect ratio ``r`` spans ``sqrt(a r)`` of the width and
    ``sqrt(a / r)`` of the height; spans over the whole frame are clipped to it (torchvision retries
    such draws and falls back to a centre crop instead: the clip keeps the batch's draws fixed-size)."""
    u = torch.rand(n, 5, generator=generator, device=device)
    if scale is not None:
        area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
        log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
        w = (area * log_r.exp()).sqrt().clamp(max=1.0)
        h = (area / log_r.exp()).sqrt().clamp(max=1.0)
        cx = (1 - w) * (2 * u[:, 2] - 1)  # centre such that the crop stays inside [-1, 1]
        cy = (1 - h) * (2 * u[:, 3] - 1)
    else:
        w = h = torch.ones(n, device=device)
        cx = cy = torch.zeros(n, device=device)
    sx = torch.where(u[:, 4] < 0.5, -w, w) if flip else w
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, h, cy
    return theta


def spec_masks(x: torch.Tensor, freq: int, time: int, count: int, generator: torch.Generator,
               place: tuple[int, int] | None = None) -> torch.Tensor:
    """``x`` ``[B, C, F, T]`` with ``count`` frequency and ``count`` time bands zeroed per sample.

    ``place`` = (start, rows): ``x`` is rows start..start+B of a batch of ``rows``, whose draws are made."""
    b, f, t = x.shape[0], x.shape[-2], x.shape[-1]
    first, total = place if place is not None else (0, b)
    keep = torch.ones(b, 1, f, t, device=x.device, dtype=torch.bool)
    for width, size, axis in ((freq, f, 2), (time, t, 3)):
        if width <= 0:
            continue
        for _ in range(count):
            u = torch.rand(total, 2, generator=generator, device=x.device)[first:first + b]
            span = (u[:, 0] * (min(width, size) + 1)).floor()                     # width in [0, width]
            start = (u[:, 1] * (size - span + 1)).floor()                            # [0, size - span]
            pos = torch.arange(size, device=x.device)
            band = (pos >= start[:, None]) & (pos < (start + span)[:, None])         # [B, size]
            keep &= ~(band.view(b, 1, size, 1) if axis == 2 else band.view(b, 1, 1, size))
    return x * keep.to(x.dtype)


class DeviceAugment:
    """Augments training batches on their device; ``kinds`` maps each modality to its kind."""

    def __init__(self, cfg: AugmentBlock, kinds: dict[str, str], seed: int, device: torch.device):
        self.cfg, self.kinds, self.device = cfg, dict(kinds), device
        self.generator = torch.Generator(device=device).manual_seed(seed + 104_729)

    def __call__(self, batch: Batch, part: tuple[int, int, int] | None = None) -> Batch:
        """The augmented batch. ``part`` = (start, stop, rows): the batch is rows start..stop of a global
        batch of ``rows`` (data-parallel); draws are made for the global batch and sliced, so every
        process augments its rows as one process would."""
        c = self.cfg
        start, stop, total = part if part is not None else (0, len(batch), len(batch))
        inputs = dict(batch.inputs)
        for m, x in batch.inputs.items():
            kind = self.kinds[m]
            if kind in ("image", "video") and (c.crop_scale is not None or c.flip):
                frames = x.flatten(0, 1) if kind == "video" else x                     # [B*T or B, C, H, W]
                per_frame = kind == "video" and c.per_frame
                t = x.shape[1] if per_frame else 1
                theta = crop_flip_grid(total * t, c.crop_scale, c.crop_ratio, c.flip, self.generator, x.device)
                theta = theta[start * t:stop * t]
                if kind == "video" and not per_frame:  # one crop per clip
                    theta = theta.repeat_interleave(x.shape[1], dim=0)
                grid = F.affine_grid(theta.to(frames.dtype), list(frames.shape), align_corners=False)
                out = F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)
                inputs[m] = out.view_as(x)
            elif kind == "audio" and (c.freq_mask or c.time_mask):
                inputs[m] = spec_masks(x, c.freq_mask, c.time_mask, c.masks, self.generator, (start, total))
        return replace(batch, inputs=inputs)  # labels, index and variant as they were

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
