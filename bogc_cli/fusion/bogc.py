"""``bogc``: Bayesian-Oriented Gradient Calibration.

Guo et al., "Multi-Modal Learning with Bayesian-Oriented Gradient Calibration", arXiv
2505.23071 (2025). Each loss's gradient is treated as a random variable; its precision
becomes per-dimension evidence; evidences are fused with a reduced Dempster-Shafer rule and
the fused belief, attributed back to the sources, reweights each source's gradient per
dimension. Only the paper's abstract is public: docs/method.md separates what it states
from this project's reconstruction, and every reconstructed choice is an option here.

Options (``method.*``): ``moments`` (microbatch | ema), ``chunks`` (4), ``beta`` (0.9),
``evidence`` (snr | relative), ``evidence_scale`` (1.0), ``frame`` (dims | sign),
``w_max`` (10), ``single_source`` (plain | calibrate), ``norm`` (none | match).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from pydantic import Field

from bogc_cli.data.loader import Batch
from bogc_cli.fusion import calibration
from bogc_cli.fusion.base import Method, StepResult
from bogc_cli.fusion.calibration import calibrate  # noqa: F401  (public: bogc_cli.fusion.bogc.calibrate)
from bogc_cli.engine.distributed import all_reduce_flat
from bogc_cli.errors import UserError
from bogc_cli.fusion.sources import GradientSources, global_batch_gradients
from bogc_cli.schema import StrictModel


class BOGCOptions(StrictModel):
    moments: Literal["microbatch", "ema"] = Field("microbatch", description="how gradient mean/variance are estimated")
    chunks: int = Field(4, ge=2, description="microbatch: chunks per (global) batch; data-parallel, each of W "
                        "processes takes chunks / W of them")
    beta: float = Field(0.9, gt=0, lt=1, description="ema: decay of the moving moments")
    evidence: Literal["relative", "snr"] = Field(
        "snr", description="snr: mu^2 / var per dimension (chosen on validation, docs/ablation.md); "
        "relative: precision over the tensor's mean precision")
    evidence_scale: float = Field(1.0, gt=0, description="lambda: how much uncertainty mass remains")
    frame: Literal["dims", "sign"] = "dims"
    w_max: float = Field(10.0, gt=0, description="clip of the per-dimension weights")
    single_source: Literal["plain", "calibrate"] = Field("plain", description="tensors touched by one loss")
    norm: Literal["none", "match"] = Field("none", description="match: rescale to the plain sum's norm per tensor")


class BOGC(Method):
    name = "bogc"
    summary = ("per-dimension gradient calibration: gradient precision -> evidence -> reduced "
               "Dempster-Shafer fusion -> weights on L_0 and each L_m")
    Options = BOGCOptions
    min_modalities = 1

    def __init__(self, options: BOGCOptions, model, ctx):
        super().__init__(options, model, ctx)
        self.sources = GradientSources(model)
        self.ema: dict[str, dict[str, torch.Tensor]] = {}
        self.ema_steps = 0
        world = self._world()
        if options.moments == "microbatch" and options.chunks % world:
            raise UserError(f"method.chunks ({options.chunks}) counts the chunks of the global batch, which the "
                            f"{world} processes share: make it a multiple of {world}")

    def _world(self) -> int:
        if self.ctx.distributed is not None:
            return self.ctx.distributed.world
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    # ----------------------------------------------------------------- losses
    def losses(self, out, labels):
        return self.source_losses(out, labels)

    def _forward(self, inputs, labels):
        with self.ctx.autocast():
            out = self.model(inputs)
            losses = self.losses(out, labels)
        return out, losses

    # ----------------------------------------------------------------- moments
    def _microbatch_moments(self, batch: Batch):
        """Per-source sums of chunk gradients and their squares; all-reduced across processes."""
        k = max(1, min(self.options.chunks // self._world(), len(batch)))
        index = torch.arange(len(batch), device=batch.labels.device).tensor_split(k)
        zeros = dict(device=self.ctx.device, dtype=self.sources.dtype)
        sums = {s: torch.zeros(n, **zeros) for s, n in self.sources.sizes.items()}
        squares = {s: torch.zeros(n, **zeros) for s, n in self.sources.sizes.items()}
        logits, loss_parts = [], {}
        for idx in index:
            out, losses = self._forward({m: x[idx] for m, x in batch.inputs.items()}, batch.labels[idx])
            flats = self.sources.gradients(losses)
            for s, g in flats.items():
                sums[s] += g
                squares[s] += g * g
            logits.append(out.fused_logits.detach())
            for s, v in losses.items():
                loss_parts[s] = loss_parts.get(s, 0.0) + v.detach().float() / k
        count = torch.tensor(float(k), **zeros)
        if self._world() > 1:  # one collective per step, not one per tensor
            order = list(sums)
            *reduced, count = all_reduce_flat([sums[s] for s in order] + [squares[s] for s in order] + [count.view(1)])
            sums = dict(zip(order, reduced[:len(order)]))
            squares = dict(zip(order, reduced[len(order):]))
            count = count[0]
        mu = {s: sums[s] / count for s in sums}
        # unbiased variance of the chunk gradients, divided by K: the variance of their mean
        var = {s: ((squares[s] - count * mu[s] * mu[s]) / (count - 1)).clamp_min(0) / count for s in sums}
        return mu, var, torch.cat(logits), sum(loss_parts.values()), loss_parts

    def _ema_moments(self, batch: Batch):
        out, losses = self._forward(batch.inputs, batch.labels)
        flats = self.sources.gradients(losses)
        if self._world() > 1:
            d = self.ctx.distributed
            flats = global_batch_gradients(flats, d.share if d is not None else 1 / self._world())
        beta = self.options.beta
        self.ema_steps += 1
        correction = 1 - beta ** self.ema_steps
        var = {}
        for s, g in flats.items():
            state = self.ema.setdefault(s, {"m1": torch.zeros_like(g), "m2": torch.zeros_like(g)})
            state["m1"].mul_(beta).add_(g, alpha=1 - beta)
            state["m2"].mul_(beta).addcmul_(g, g, value=1 - beta)
            m1, m2 = state["m1"] / correction, state["m2"] / correction
            # one sample has no variance: E[g^2] - E[g]^2 is exactly 0 there, but in floating point it is
            # rounding noise (~1e-16 g^2, in some dimensions only) that would become evidence
            var[s] = (m2 - m1 * m1).clamp_min(0) if self.ema_steps > 1 else torch.zeros_like(g)
        parts = {s: v.detach().float() for s, v in losses.items()}
        return flats, var, out.fused_logits.detach(), sum(parts.values()), parts

    # ----------------------------------------------------------------- step
    def step(self, batch: Batch) -> StepResult:
        self.ctx.optimizer.zero_grad(set_to_none=True)
        # data-parallel, every process must take the same branch (its collectives must match)
        if self.options.moments == "microbatch" and (len(batch) >= 2 or self._world() > 1):
            mu, var, logits, loss, parts = self._microbatch_moments(batch)
        else:
            mu, var, logits, loss, parts = self._ema_moments(batch)
        logs = self._apply(mu, var)
        self.ctx.grads_synced = self._world() > 1  # every process calibrated the same all-reduced moments
        self.clip_and_step()
        logs.update({f"loss.{s}": v for s, v in parts.items()})
        return StepResult(torch.as_tensor(loss), logits, logs)

    def _apply(self, mu: dict[str, torch.Tensor], var: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Calibrate every block, write p.grad, and return the step's diagnostics."""
        o = self.options
        logs: dict[str, torch.Tensor] = {}
        weight_sum: dict[str, torch.Tensor] = {}
        weight_sq: dict[str, torch.Tensor] = {}
        weight_n: dict[str, int] = {}
        clipped, counted = torch.zeros((), device=self.ctx.device), 0

        for block in self.sources.blocks:
            m = self.sources.stack(mu, block)
            if len(block.sources) == 1 and o.single_source == "plain":
                self.sources.assign(block, m[0])
                continue
            v = self.sources.stack(var, block)
            cal = calibration.calibrate_segments(m, v, block.segments, o.evidence, o.frame, o.evidence_scale,
                                                 o.w_max, o.norm)
            self.sources.assign(block, cal.update)
            for i, s in enumerate(block.sources):
                w = cal.weights[i].detach()
                weight_sum[s] = weight_sum.get(s, 0) + w.sum()
                weight_sq[s] = weight_sq.get(s, 0) + (w * w).sum()
                weight_n[s] = weight_n.get(s, 0) + w.numel()
            clipped = clipped + cal.clipped.sum()
            counted += cal.clipped.numel()
            for name in block.names:
                if name.startswith("encoder:"):
                    logs[f"bogc.uncertainty.{name.split(':', 1)[1]}"] = cal.uncertainty.mean().detach()
        for s, total in weight_sum.items():
            mean = total / weight_n[s]
            logs[f"bogc.weight_mean.{s}"] = mean
            logs[f"bogc.weight_std.{s}"] = (weight_sq[s] / weight_n[s] - mean * mean).clamp_min(0).sqrt()
        if counted:
            logs["bogc.clipped"] = clipped / counted
        return logs

    # ----------------------------------------------------------------- state and plots
    def state_dict(self):
        return {"ema": self.ema, "ema_steps": self.ema_steps}

    def load_state_dict(self, state):
        self.ema = state.get("ema", {})
        self.ema_steps = state.get("ema_steps", 0)

    def on_train_end(self, run_dir, records: list[dict]) -> None:
        from bogc_cli.report.plots import plot_bogc_diagnostics

        plot_bogc_diagnostics(records, run_dir / "bogc_diagnostics.png", title=f"BOGC diagnostics: {run_dir}")


METHOD = BOGC
