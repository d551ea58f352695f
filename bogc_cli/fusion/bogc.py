"""``bogc``: Bayesian-Oriented Gradient Calibration.

Guo et al., "Multi-Modal Learning with Bayesian-Oriented Gradient Calibration", arXiv
2505.23071 (2025). Each loss's gradient is treated as a random variable; its precision
becomes per-dimension evidence; evidences are fused with a reduced Dempster-Shafer rule and
the fused belief, attributed back to the sources, reweights each source's gradient per
dimension. The paper's method section is not public: docs/method.md separates what its abstracts
and summaries state from this project's reconstruction, and every reconstructed choice is an option here.

Defaults are chosen on validation accuracy, never test (docs/ablation.md): ``frame: modality`` since the
issue-18 ablation (5 seeds on avdigits-avmnist, mfeat weak3 and the synthetic imbalance sweep: mean validation
accuracy 0.851 against 0.846 for ``frame: dims``, the default before it; not a significant difference, paired
p = 0.24; the same cost). Deviation from the paper's reading (``moments: laplace``, ``evidence: precision``):
neither raised validation accuracy beyond ``frame: modality`` alone, and ``laplace`` costs 4.6x as much
(CPU time per run on avdigits-avmnist).

Options (``method.*``): ``moments`` (microbatch | ema | laplace), ``chunks`` (4), ``beta`` (0.9),
``evidence`` (snr | relative | precision), ``evidence_scale`` (1.0), ``frame`` (modality | dims | sign),
``w_max`` (10), ``single_source`` (plain | calibrate), ``norm`` (none | match).
"""

from __future__ import annotations

from dataclasses import dataclass
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
from bogc_cli.fusion.chunk_grads import LinearChunkMoments
from bogc_cli.fusion.laplace import LastLayerLaplace
from bogc_cli.fusion.sources import Block, GradientSources, global_batch_gradients
from bogc_cli.schema import StrictModel


class BOGCOptions(StrictModel):
    moments: Literal["microbatch", "ema", "laplace"] = Field(
        "microbatch", description="how gradient mean/variance are estimated: microbatch (variance over chunks of the "
        "batch), ema (over steps), laplace (over samples of a diagonal Laplace posterior of each loss's last layer)")
    chunks: int = Field(4, ge=2, description="microbatch: chunks per (global) batch; data-parallel, each of W "
                        "processes takes chunks / W of them; a model with BatchNorm gets at most len(batch) // 2 "
                        "chunks, so a small last batch never has a one-sample chunk")
    beta: float = Field(0.9, gt=0, lt=1, description="ema: decay of the moving moments; laplace: decay of the "
                        "moving curvature (diagonal GGN)")
    samples: int = Field(4, ge=2, description="laplace: Monte Carlo samples of the last layers per step")
    prior_precision: float = Field(1.0, gt=0, description="laplace: precision of the Gaussian prior on the last "
                                   "layers (posterior precision = prior + N x mean diagonal GGN)")
    evidence: Literal["relative", "snr", "precision"] = Field(
        "snr", description="snr: mu^2 / var per dimension (chosen on validation, docs/ablation.md); "
        "relative: precision over the tensor's mean precision; precision: mu^2 / var from each source's "
        "own moments alone")
    evidence_scale: float = Field(1.0, gt=0, description="lambda: how much uncertainty mass remains")
    frame: Literal["dims", "sign", "modality"] = Field(
        "modality", description="modality: per dimension the sources reaching it, one opinion each (the paper's "
        "fusion across modalities; chosen on validation in the issue-18 ablation, docs/ablation.md); dims: a tensor's "
        "dimensions are the frame (the default before it); sign: {+, -} per dimension")
    w_max: float = Field(10.0, gt=0, description="clip of the per-dimension weights")
    single_source: Literal["plain", "calibrate"] = Field("plain", description="tensors touched by one loss")
    norm: Literal["none", "match"] = Field("none", description="match: rescale to the plain sum's norm per tensor")


class BOGC(Method):
    name = "bogc"
    summary = ("per-dimension gradient calibration: gradient precision -> evidence -> reduced "
               "Dempster-Shafer fusion -> weights on L_0 and each L_m")
    Options = BOGCOptions
    min_modalities = 1
    tasks = ("classification", "multilabel", "regression")
    task_note = ("the calibration reads the gradients of L_0 and each L_m, whatever loss they are (the task's: CE, "
                 "BCE with logits, L1/MSE); moments: laplace needs the softmax GGN, so classification only")

    @classmethod
    def check_task(cls, options: BOGCOptions, task: str) -> str | None:
        if options.moments == "laplace" and task != "classification":
            return (f"method bogc with moments: laplace samples a last-layer Laplace posterior built on the softmax "
                    f"cross-entropy's curvature, which a {task} run does not have; use moments: microbatch or ema")
        return super().check_task(options, task)

    def __init__(self, options: BOGCOptions, model, ctx):
        super().__init__(options, model, ctx)
        self.sources = GradientSources(model)
        self.groups = _groups(self.sources, options.single_source == "calibrate", ctx.device)
        # diagnostics: which sources have calibrated weights, and their counts
        counts = sum(g.counts for g in self.groups) if self.groups else torch.zeros(len(self.sources.sources))
        self._inverse_counts = 1 / counts.clamp_min(1)
        self._weight_keys = [(i, f"bogc.weight_mean.{s}", f"bogc.weight_std.{s}")
                             for i, s in enumerate(self.sources.sources) if counts[i] > 0]
        self._weights_numel = sum(g.numel for g in self.groups)
        self.ema: dict[str, dict[str, torch.Tensor]] = {}
        self.ema_steps = 0
        # parameters whose variance the calibration reads, and the fast chunk gradients when they are all linear
        self._needs_var = {id(p) for group in self.groups for b in group.blocks for p in b.params}
        self._pass_of = {s: group[0] for group in self.sources.passes for s in group}
        self._plans: dict[str, tuple] = {}  # per backward pass, where its chunk squares go (_square_plan)
        needed = [p for p in model.parameters() if id(p) in self._needs_var]
        self.linear_chunks = (LinearChunkMoments(model, needed)
                              if options.moments == "microbatch" and LinearChunkMoments.applicable(model, needed)
                              else None)
        self._batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        self.laplace, self._rows = None, None
        if options.moments == "laplace":
            # the same seed on every process (they seed torch alike), so every process draws the same samples
            self.laplace = LastLayerLaplace(model, options.samples, options.prior_precision, options.beta,
                                            seed=torch.initial_seed() + 104_729)
        world = self._world()
        if options.moments == "microbatch" and options.chunks % world:
            raise UserError(f"method.chunks ({options.chunks}) counts the chunks of the global batch, which the "
                            f"{world} processes share: make it a multiple of {world}")

    def _share(self) -> float:
        """This process's share of the global batch (1 without data parallelism)."""
        d = self.ctx.distributed
        return d.share if d is not None else 1 / self._world()

    def _train_rows(self) -> int:
        """N of the Laplace posterior: the rows trained on (the train split less any held-out part)."""
        if self._rows is None:
            loader = self.ctx.train_eval
            dataset = getattr(loader, "dataset", None)
            self._rows = (len(dataset) if dataset is not None else
                          sum(len(b) for b in loader) if loader is not None else 1)
        return self._rows

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
        if self._batchnorm and self.model.training:
            # BatchNorm cannot normalise a chunk of one sample whose feature map is 1x1 (torch: "Expected more
            # than 1 value per channel when training"): a small last batch keeps at least two samples per chunk
            k = max(1, min(k, len(batch) // 2))
        if self.linear_chunks is not None and k > 1 and len(batch) % k == 0:
            found = self._linear_chunk_moments(batch, k)
            if found is not None:
                return found
        sums, squares, logits, loss_parts = self._chunk_loop_sums(batch, k)
        zeros = dict(device=self.ctx.device, dtype=self.sources.dtype)
        count = torch.tensor(float(k), **zeros)
        if self._world() > 1:  # one collective per step, not one per tensor
            order = list(sums)
            *reduced, count = all_reduce_flat([sums[s] for s in order] + [squares[s] for s in order] + [count.view(1)])
            sums = dict(zip(order, reduced[:len(order)]))
            squares = dict(zip(order, reduced[len(order):]))
            count = count[0]
        mu, var = {}, {}
        for s in sums:
            mu[s], var[s] = _chunk_mean_var(sums[s], squares[s], count)
        return mu, var, logits, sum(loss_parts.values()), loss_parts

    def _chunk_loop_sums(self, batch: Batch, k: int):
        """One forward per chunk, one backward per pass per chunk."""
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
        return sums, squares, torch.cat(logits), loss_parts

    def _linear_chunk_moments(self, batch: Batch, k: int):
        """One forward of the batch, one backward per pass; chunk squares of linear layers by ``LinearChunkMoments``.

        Returns what ``_microbatch_moments`` returns, or None where the layers cannot be split (then the loop)."""
        fast = self.linear_chunks
        with fast.capture():
            out, losses = self._forward(batch.inputs, batch.labels)
            passes = self.sources.pass_gradients(losses, on_pass=lambda group: fast.set_pass(group[0]))
        if not fast.valid:  # a layer ran twice in the forward: never again on this model
            self.linear_chunks = None
            return None
        dtype = self.sources.dtype
        sums, squares = [], []
        for group, flat in passes:
            # the chunk squares are written straight into one flat buffer per pass, in the pass's parameter order
            square = torch.empty_like(flat)
            zero_spans, layers = self._square_plan(group)
            for start, stop in zero_spans:
                square[start:stop].zero_()
            for module, spans in layers:
                views = tuple(None if span is None else square[span[0]:span[1]].view(q.shape)
                              for span, q in zip(spans, (module.weight, module.bias)))
                if not fast.squares(module, group[0], k, dtype, views):  # the pass did not reach the layer
                    for v in views:
                        if v is not None:
                            v.zero_()
            sums.append(flat.mul_(k))                          # K chunks whose mean is the batch's gradient
            squares.append(square.mul_(k * k))                 # each chunk K x its rows' share
        count = torch.tensor(float(k), dtype=dtype, device=self.ctx.device)
        if self._world() > 1:
            *reduced, count = all_reduce_flat(sums + squares + [count.view(1)])
            sums, squares, count = reduced[:len(passes)], reduced[len(passes):], count[0]
        mu, var = {}, {}
        for (group, _), total, square in zip(passes, sums, squares):
            m, v = _chunk_mean_var(total, square, count)
            mu.update(self.sources.split(group, m))
            var.update(self.sources.split(group, v))
        parts = {s: v.detach().float() for s, v in losses.items()}
        return mu, var, out.fused_logits.detach(), sum(parts.values()), parts

    def _square_plan(self, group: list[str]):
        """Where the chunk squares of a pass go in its flat buffer (made once per pass): the spans that stay
        zero (parameters whose variance no rule reads) and, per linear layer, the spans of its weight and bias
        (None for one that needs no variance)."""
        plan = self._plans.get(group[0])
        if plan is None:
            zero_spans, spans, layers, at = [], {}, {}, 0
            for q in (q for s in group for q in self.sources.params[s]):
                if id(q) in self._needs_var:
                    spans[id(q)] = (at, at + q.numel())
                    module = self.linear_chunks.owner[id(q)]
                    layers[id(module)] = module
                elif zero_spans and zero_spans[-1][1] == at:
                    zero_spans[-1] = (zero_spans[-1][0], at + q.numel())
                else:
                    zero_spans.append((at, at + q.numel()))
                at += q.numel()
            plan = self._plans[group[0]] = (zero_spans, [
                (m, tuple(None if q is None else spans.get(id(q)) for q in (m.weight, m.bias)))
                for m in layers.values()])
        return plan

    def _ema_moments(self, batch: Batch):
        out, losses = self._forward(batch.inputs, batch.labels)
        flats = self.sources.gradients(losses)
        if self._world() > 1:
            flats = global_batch_gradients(flats, self._share())
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

    def _laplace_moments(self, batch: Batch):
        """Gradient at the Laplace posterior mean and its variance over ``samples`` draws of the last layers."""
        with self.laplace.capture():
            out, losses = self._forward(batch.inputs, batch.labels)
        sync = None
        if self._world() > 1:
            share = self._share()

            def sync(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
                summed = all_reduce_flat([t.reshape(-1) * share for t in tensors])
                return [x.view_as(t) for x, t in zip(summed, tensors)]
        rows = self.laplace.gradient_rows(out.features, batch.labels, self.sources.params, self.sources.dtype,
                                          self._train_rows(), sync)
        mu = {s: r[0] for s, r in rows.items()}
        var = {s: r[1:].var(dim=0) for s, r in rows.items()}  # unbiased, over the samples
        parts = {s: v.detach().float() for s, v in losses.items()}
        return mu, var, out.fused_logits.detach(), sum(parts.values()), parts

    # ----------------------------------------------------------------- step
    def step(self, batch: Batch) -> StepResult:
        self.ctx.optimizer.zero_grad(set_to_none=True)
        # data-parallel, every process must take the same branch (its collectives must match)
        if self.options.moments == "laplace":
            mu, var, logits, loss, parts = self._laplace_moments(batch)
        elif self.options.moments == "microbatch" and (len(batch) >= 2 or self._world() > 1):
            mu, var, logits, loss, parts = self._microbatch_moments(batch)
        else:
            mu, var, logits, loss, parts = self._ema_moments(batch)
        logs = self._apply(mu, var)
        self.ctx.grads_synced = self._world() > 1  # every process calibrated the same all-reduced moments
        self.clip_and_step()
        logs.update({f"loss.{s}": v for s, v in parts.items()})
        return StepResult(torch.as_tensor(loss), logits, logs)

    def _apply(self, mu: dict[str, torch.Tensor], var: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Calibrate every block, write p.grad, and return the step's diagnostics.

        Diagnostics describe the weights applied, i.e. clipped to ``[0, w_max]``: ``bogc.weight_mean.<s>``
        and ``bogc.weight_std.<s>`` over source s's dimensions, ``bogc.clipped`` the share of weights that
        were above ``w_max`` before clipping, ``bogc.uncertainty.<m>`` the mean fused uncertainty of encoder
        m's tensors."""
        o = self.options
        for block in self.sources.blocks:
            if len(block.sources) == 1 and o.single_source == "plain":
                self.sources.assign(block, mu[block.sources[0]][block.slices[block.sources[0]]])
        logs: dict[str, torch.Tensor] = {}
        if not self.groups:
            return logs
        moments = clipped = None  # [2, sources]: sums of applied weights and of their squares
        for group in self.groups:
            m, v = group.stack(mu), group.stack(var)
            cal = calibration.calibrate_segments(m, v, group.segments, o.evidence, o.frame, o.evidence_scale,
                                                 o.w_max, o.norm)
            for block, (start, stop) in zip(group.blocks, group.spans):
                self.sources.assign(block, cal.update[start:stop])
            # sums of the weights and of their squares per row and block (a block lies in one source per row)
            parts = cal.applied.detach().split(group.block_numels, dim=1)          # [S, n_block] each
            sums = torch.stack([torch.stack([p.sum(dim=1) for p in parts], dim=1),
                                torch.stack([(p * p).sum(dim=1) for p in parts], dim=1)])  # [2, S, blocks]
            by_source = torch.zeros(2, len(self.sources.sources), dtype=sums.dtype, device=sums.device)
            by_source.index_add_(1, group.block_source.flatten(), sums.flatten(1))
            moments = by_source if moments is None else moments + by_source
            c = cal.clipped.sum()
            clipped = c if clipped is None else clipped + c
            if group.encoders:
                u = group.encoder_mean @ cal.uncertainty.detach()
                logs.update(zip(group.encoders_logged, u.unbind()))
        mean, square = (moments * self._inverse_counts).unbind()
        std = (square - mean * mean).clamp_min(0).sqrt()
        for i, key_mean, key_std in self._weight_keys:
            logs[key_mean], logs[key_std] = mean[i], std[i]
        logs["bogc.clipped"] = clipped / self._weights_numel
        return logs

    # ----------------------------------------------------------------- state and plots
    def state_dict(self):
        state = {"ema": self.ema, "ema_steps": self.ema_steps}
        if self.laplace is not None:
            state["laplace"] = self.laplace.state_dict()
        return state

    def load_state_dict(self, state):
        self.ema = state.get("ema", {})
        self.ema_steps = state.get("ema_steps", 0)
        if self.laplace is not None and "laplace" in state:
            self.laplace.load_state_dict(state["laplace"])

    def on_train_end(self, run_dir, records: list[dict]) -> None:
        from bogc_cli.report.plots import plot_bogc_diagnostics

        plot_bogc_diagnostics(records, run_dir / "bogc_diagnostics.png", title=f"BOGC diagnostics: {run_dir}",
                              w_max=self.options.w_max)


def _chunk_mean_var(sums: torch.Tensor, squares: torch.Tensor, count: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of K chunk gradients and the variance of that mean: unbiased variance over chunks, divided by K.

    In place (the buffers are the caller's scratch): ``sums`` becomes the mean, ``squares`` the variance."""
    mu = sums.div_(count)
    centred = torch.mul(count, mu).mul_(mu)                                       # count * mu * mu
    return mu, squares.sub_(centred).div_(count - 1).clamp_min_(0).div_(count)


@dataclass
class _Group:
    """Blocks with the same number of sources, calibrated in one call on their concatenated buffers.

    Row i of the group's ``[S, N]`` matrix holds each block's i-th source; ``spans``: where each block
    lies in it; ``source_of`` ``[S, T]``: the source (index in ``GradientSources.sources``) of each row's
    tensor, ``block_source`` ``[S, blocks]`` the same per block; ``encoder_mean`` ``[E, T]``: averages per-tensor
    values over each encoder block's tensors."""

    blocks: list[Block]
    spans: list[tuple[int, int]]
    segments: calibration.Segments
    source_of: torch.Tensor
    block_source: torch.Tensor
    counts: torch.Tensor
    numel: int
    encoders: list[str]
    encoder_mean: torch.Tensor

    @property
    def block_numels(self) -> list[int]:
        return [b.numel for b in self.blocks]

    @property
    def encoders_logged(self) -> list[str]:
        return [f"bogc.uncertainty.{name}" for name in self.encoders]

    def stack(self, flats: dict[str, torch.Tensor]) -> torch.Tensor:
        rows = []
        for i in range(len(self.blocks[0].sources)):
            parts = [flats[b.sources[i]][b.slices[b.sources[i]]] for b in self.blocks]
            rows.append(parts[0] if len(parts) == 1 else torch.cat(parts))
        return torch.stack(rows)


def _groups(sources: GradientSources, single: bool, device) -> list[_Group]:
    """The calibration groups of a model's blocks: every block with several sources (and, with
    ``single_source: calibrate``, those with one), grouped by their number of sources."""
    by_count: dict[int, list[Block]] = {}
    for block in sources.blocks:
        if len(block.sources) > 1 or single:
            by_count.setdefault(len(block.sources), []).append(block)
    like = torch.zeros((), dtype=sources.dtype, device=device)
    index = {s: i for i, s in enumerate(sources.sources)}
    groups = []
    for blocks in by_count.values():
        numels = [p.numel() for b in blocks for p in b.params]
        segments = calibration.Segments.from_numels(numels, like)
        spans, start = [], 0
        source_of, counts = [], torch.zeros(len(sources.sources), dtype=sources.dtype, device=device)
        encoders, tensor_block = [], []
        for j, b in enumerate(blocks):
            spans.append((start, start + b.numel))
            start += b.numel
            tensor_block += [j] * len(b.params)
            for s in b.sources:
                counts[index[s]] += b.numel
            encoders += [(j, n.split(":", 1)[1]) for n in b.names if n.startswith("encoder:")]
        for i in range(len(blocks[0].sources)):
            source_of.append([index[b.sources[i]] for b in blocks for _ in b.params])
        mean = torch.zeros(len(encoders), len(numels), dtype=sources.dtype, device=device)
        for e, (j, _) in enumerate(encoders):
            mask = torch.tensor([t == j for t in tensor_block], device=device)
            mean[e, mask] = 1.0 / float(mask.sum())
        block_source = torch.tensor([[index[b.sources[i]] for b in blocks] for i in range(len(blocks[0].sources))],
                                    device=device)
        groups.append(_Group(blocks, spans, segments, torch.tensor(source_of, device=device), block_source, counts,
                             len(blocks[0].sources) * start, [name for _, name in encoders], mean))
    return groups


METHOD = BOGC
