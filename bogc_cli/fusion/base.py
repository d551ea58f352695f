"""The Method interface: how one optimisation step turns a batch into a parameter update.

A method is built from its recipe block (``method.*``), the model and a ``StepContext``.
The default ``step`` is: forward (under autocast), ``losses`` -> one dict of per-source
losses, ``before_backward`` (where a method hooks into the graph), backward of their sum,
``after_backward`` (where gradient-modulating methods edit
``p.grad``), optimiser step. Methods that need per-loss gradients override ``step`` and use
``model.param_groups()`` to know which losses touch which parameters. Epoch hooks let a
method keep state across steps (prototypes, running means); ``state_dict`` saves it.
Data-parallel, a rule that takes statistics of the batch (scores, means, prototypes) gets the
global batch's from ``batch_sum`` / ``batch_mean`` (one all-reduce for them all) and, where it is
non-linear in a statistic that carries gradient, back-propagates through ``global_value``.

Epochs. The engine counts epochs from 1 (``ctx.epoch`` is 1 in the first epoch, as in
``metrics.jsonl``). A method's epoch-valued options (modulation windows, warm-ups, super-epochs)
are written in its reference code's own count, so that a recipe copies the reference's flags
unchanged and a window means the same epochs as in the reference: ``Method.epoch_base`` is the
number the reference gives its first epoch (0 for a ``for epoch in range(E)`` loop, 1 for
``range(1, E + 1)``), ``reference_epoch`` converts, and ``in_epoch_window`` is the one test
every windowed method uses (inclusive at both ends, as the references write ``start <= epoch <=
end``). OGM-GE's ``end_epoch: 50`` with ``epoch_base = 0`` thus modulates our epochs 1-51.

Epoch-level interventions. ``on_epoch_start`` may change parameters (a soft re-initialisation), reset the
optimiser's state (``reset_optimizer_state``: a fresh optimiser per phase) or choose what the epoch trains
(whose turn it is); the engine checkpoints after the epoch, so a resume at an epoch boundary runs the hook
again on the same state and one inside the epoch (``on_epoch_resume``) finds its result in the checkpoint.
A method that re-samples the training set returns the epoch's entries from ``training_entries``.

Task types. ``tasks`` lists the task types the method's rule is defined for (default: classification
only); recipe validation refuses the others (``check_task``, with ``task_note`` saying how the rule was
generalised, shown by ``bogc list``). The shared losses (``fused_loss``, ``source_losses``,
``probe_losses``) are the run's task loss (``task_loss``: cross-entropy, binary cross-entropy with logits,
L1 or MSE; tasks/losses.py) on the model's heads, so a rule built only from them carries over unchanged.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from bogc_cli.data.loader import Batch
from bogc_cli.models.multimodal import FUSED, MultimodalModel, Outputs
from bogc_cli.schema import StrictModel
from bogc_cli.tasks.losses import task_loss


class NoOptions(StrictModel):
    pass


@dataclass
class StepContext:
    """What the engine lends a method: device, autocast, the optimiser and gradient clipping."""

    device: torch.device
    optimizer: torch.optim.Optimizer
    autocast: Callable[[], AbstractContextManager] = nullcontext
    grad_clip: float | None = None
    epoch: int = 1  # the current epoch, counted from 1 (see "Epochs" above); set by on_epoch_start
    holdout: Any = None  # DataLoader over the held-out part of train, for methods that ask for one
    train_eval: Any = None  # DataLoader over the rows trained on, unshuffled (for per-epoch passes)
    batch_size: int = 0  # train.batch_size (the global batch), for methods that run training passes of their own
    extra: dict[str, Any] = field(default_factory=dict)
    skipped_step: bool = False  # set by clip_and_step when a non-finite gradient made it skip the update
    distributed: Any = None  # engine.distributed.Distributed when data-parallel, else None
    grads_synced: bool = False  # set by a method that made every process's gradients agree itself


@dataclass
class StepResult:
    """``loss``: scalar (detached); ``fused_logits``: ``[B, C]`` (detached); ``logs``: scalars to average per epoch."""

    loss: torch.Tensor
    fused_logits: torch.Tensor
    logs: dict[str, torch.Tensor]


class Method:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Options: ClassVar[type[StrictModel]] = NoOptions
    min_modalities: ClassVar[int] = 1
    max_modalities: ClassVar[int | None] = None
    modality_note: ClassVar[str] = ""  # how the rule extends past the paper's modality count, for `bogc list`
    # what the defaults follow (reference file) and each deliberate deviation from it, for `bogc list`
    fidelity: ClassVar[str] = ""
    # the number the reference code gives its first epoch (0 or 1): the count of epoch-valued options
    epoch_base: ClassVar[int] = 1
    # the task types the rule is defined for (tasks/__init__.py), and how it was carried past classification
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    task_note: ClassVar[str] = ""

    def __init__(self, options: StrictModel, model: MultimodalModel, ctx: StepContext):
        self.options = options
        self.model = model
        self.ctx = ctx

    # ------------------------------------------------------------ identity and checks
    @classmethod
    def label(cls, options: StrictModel) -> str:
        """Name of this configuration in run paths and reports."""
        return cls.name

    @classmethod
    def used_modalities(cls, options: StrictModel, available: list[str]) -> list[str]:
        return list(available)

    @classmethod
    def check_modalities(cls, options: StrictModel, modalities: list[str]) -> str | None:
        """Return a reason this method cannot run on these modalities, or None."""
        m = len(modalities)
        if m < cls.min_modalities:
            return f"method {cls.name!r} needs at least {cls.min_modalities} modalities, the data has {m}"
        if cls.max_modalities is not None and m > cls.max_modalities:
            return (f"method {cls.name!r} is defined for at most {cls.max_modalities} modalities, the run has {m} "
                    f"({', '.join(modalities)}); choose fewer with dataset.modalities or dataset.preset")
        return None

    @classmethod
    def check_task(cls, options: StrictModel, task: str) -> str | None:
        """Return a reason this method (with these options) cannot train a ``task`` run, or None."""
        if task in cls.tasks:
            return None
        return f"method {cls.name!r} is defined for {' and '.join(cls.tasks)} only, not for {task}"

    @classmethod
    def check_config(cls, options: StrictModel, recipe) -> str | None:
        """Return a reason this method cannot run with the recipe's model/optim settings, or None.

        Runs at recipe validation, before any data is read or any training starts."""
        return None

    @classmethod
    def adapt_model(cls, options: StrictModel, model: MultimodalModel) -> None:
        """Change the model's structure or prediction rule for this method, in place.

        Called whenever a run's model is built (training, ``eval``, ``missing-modality``), before
        weights are loaded, so a checkpoint always meets the model it was trained as."""

    @classmethod
    def before_training(cls, options: StrictModel, model: MultimodalModel, recipe, classes: list[str]) -> None:
        """Act on a freshly built model when a run is about to train (never at ``eval`` or
        ``missing-modality``), before anything is written: e.g. load warm-start weights.

        ``recipe``: the run's resolved single-seed recipe; ``classes``: the data's class names in label
        order. Raise ``UserError`` for a setting that cannot be honoured (the run then writes nothing)."""

    @classmethod
    def prerequisite_runs(cls, options: StrictModel, recipe, modalities: list[str]) -> dict[str, Any]:
        """Runs this run trains first when its options name none (UMT's unimodal teachers): ``{name: recipe}``,
        each a single-seed recipe as a dict (``Recipe.to_dict()``'s form), validated and trained by the engine as an ordinary run directory ``<run_dir>/<name>``
        (resuming one already started) before ``before_training``; default: none. ``modalities``: the run's.
        The engine then hands the trained directories to ``with_prerequisites``."""
        return {}

    @classmethod
    def with_prerequisites(cls, options: StrictModel, runs: dict[str, Any]) -> StrictModel:
        """``options`` naming the prerequisite runs just trained, ``{name: run_dir}`` (``Path``)."""
        return options

    @classmethod
    def holdout_fraction(cls, options: StrictModel) -> float:
        """Fraction of the train split held out from training and lent as ``ctx.holdout`` (0: none)."""
        return 0.0

    # ------------------------------------------------------------ training
    def losses(self, out: Outputs, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-source losses, keyed ``fused`` / modality name (and ``probe:m`` for detached probes)."""
        raise NotImplementedError

    def before_backward(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        """Act on the forward's graph before backward (e.g. hooks that scale a branch's gradient,
        statistics of the features); return scalars to log."""
        return {}

    def after_backward(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        """Edit gradients in place before the optimiser step; return scalars to log."""
        return {}

    def step(self, batch: Batch) -> StepResult:
        opt = self.ctx.optimizer
        opt.zero_grad(set_to_none=True)
        with self.ctx.autocast():
            out = self.model(batch.inputs)
            losses = self.losses(out, batch.labels)
        logs = self.before_backward(out, batch)
        total = torch.stack([v.float() for v in losses.values()]).sum()
        total.backward()
        logs = {**logs, **self.after_backward(out, batch)}
        self.clip_and_step()
        logs = {**{f"loss.{k}": v.detach() for k, v in losses.items()}, **logs}
        return StepResult(total.detach(), out.fused_logits.detach(), logs)

    def clip_and_step(self) -> None:
        """Clip (when ``grad_clip`` is set) and take the optimiser step, unless a gradient is NaN or
        infinite: then the update is skipped, the gradients dropped and ``ctx.skipped_step`` set.

        Data-parallel, the gradients are first averaged across processes (one all-reduce), unless the
        method already made them agree (``ctx.grads_synced``), so every process takes the same step."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if self.ctx.distributed is not None and not self.ctx.grads_synced:
            self.ctx.distributed.average_gradients(grads)
        self.ctx.grads_synced = False
        if grads:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
            if not torch.isfinite(norm):
                self.ctx.optimizer.zero_grad(set_to_none=True)
                self.ctx.skipped_step = True
                return
            if self.ctx.grad_clip:  # as clip_grad_norm_, reusing the norm just computed
                coef = (self.ctx.grad_clip / (norm + 1e-6)).clamp(max=1.0)
                for g in grads:
                    g.mul_(coef.to(g.dtype))
        self.ctx.optimizer.step()

    # ------------------------------------------------------------ epochs (the convention: module docstring)
    def reference_epoch(self, epoch: int | None = None) -> int:
        """The reference code's number for our (1-based) ``epoch``, default the current one:
        ``epoch - 1 + epoch_base``."""
        return (self.ctx.epoch if epoch is None else epoch) - 1 + self.epoch_base

    def in_epoch_window(self, start: int, end: int | None, epoch: int | None = None) -> bool:
        """Whether ``epoch`` (default: the current one) lies in ``[start, end]``, both given in the reference's
        count (``epoch_base``) and inclusive, as the references test ``start <= epoch <= end``; ``end`` None: open."""
        e = self.reference_epoch(epoch)
        return start <= e and (end is None or e <= end)

    def on_epoch_start(self, epoch: int) -> None:
        self.ctx.epoch = epoch

    def on_epoch_resume(self, epoch: int) -> None:
        """Called instead of ``on_epoch_start`` when a run resumes in the middle of ``epoch``: what the
        epoch's start computed is already back from ``state_dict``, so only the epoch is set."""
        self.ctx.epoch = epoch

    def training_entries(self) -> torch.Tensor | None:
        """The training set of the current epoch, when the method re-samples it; None (the default): every row
        of the train split once.

        Asked by the engine right after ``on_epoch_start`` / ``on_epoch_resume``; the loader then shuffles these
        entries (``[N]`` int64 codes from ``data.loader.resampled_entries``: each row once plus extra copies of
        chosen rows, each copy tagged with a variant ``v >= 1`` whose meaning is the method's) with the run's
        batch-order generator, so the order is a function of the seed and the entries, and a mid-epoch resume
        continues it. The entries must be a function of what ``state_dict`` restores (a resumed epoch is not
        started again); ``batch.variant`` tells each step which variant each sample is. Data-parallel, every
        process must return the same entries."""
        return None

    def reset_optimizer_state(self, params=None) -> None:
        """Forget the optimiser's per-parameter state (momentum, Adam moments and step counts) of ``params``
        (default: all), as a fresh optimiser of the same kind would start; the learning rate and schedule stay.
        Call it from an epoch hook (``on_epoch_start``, never ``on_epoch_resume``): the state is checkpointed with
        the optimiser, so a resumed run holds what the reset left and what the epoch's steps added since."""
        state = self.ctx.optimizer.state
        for p in (list(state) if params is None else params):
            state.pop(p, None)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        return {}

    def on_train_end(self, run_dir, records: list[dict]) -> None:
        """Called once after the last epoch with the run directory and the per-epoch records."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------ data-parallel statistics
    def batch_sum(self, sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sums over the global batch from this process's sums over its rows (tensors of any shape).

        One process: the identity. Data-parallel: one all-reduce for all of them."""
        d = self.ctx.distributed
        if d is None or not sums:
            return sums
        return dict(zip(sums, d.sum([v.detach() for v in sums.values()])))

    def batch_mean(self, means: dict[str, torch.Tensor], gradients: bool = False) -> dict[str, torch.Tensor]:
        """Means over the global batch from this process's means over its rows (tensors of any shape).

        One process: the identity. Data-parallel: one all-reduce, each process weighted by its share of
        the batch. With ``gradients``, every parameter's gradient rides in the same all-reduce (averaged,
        as ``clip_and_step`` would) and ``ctx.grads_synced`` is set: statistics needed only after
        backward then cost no collective of their own."""
        d = self.ctx.distributed
        if d is None or not (means or gradients):
            return means
        if not gradients:
            summed = d.sum([v.detach().double() * d.share for v in means.values()])
            return {k: v.to(means[k].dtype) for k, v in zip(means, summed)}
        out = {k: v.detach().float().clone() for k, v in means.items()}
        d.average_gradients([p.grad for p in self.model.parameters() if p.grad is not None] + list(out.values()))
        self.ctx.grads_synced = True
        return {k: v.to(means[k].dtype) for k, v in out.items()}

    def batch_part(self, rows: int) -> tuple[int, int, int]:
        """(start, stop, global rows): where this process's ``rows`` rows sit in the global batch, so that
        per-sample draws can be made for the global batch and sliced. One process: ``(0, rows, rows)``."""
        d = self.ctx.distributed
        return d.part if d is not None and d.part is not None else (0, rows, rows)

    def global_value(self, local: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
        """``whole``'s value (a global batch statistic, e.g. from ``batch_mean``) with ``local``'s gradient
        (this process's rows' part of it, same shape).

        A non-linear function of ``whole`` then back-propagates its global derivative into this process's
        rows; averaging the processes' gradients by share gives one process's gradient on the whole batch.
        One process: ``local`` itself."""
        if self.ctx.distributed is None:
            return local
        return whole.detach() + (local - local.detach())

    # ------------------------------------------------------------ shared pieces
    def task_loss(self, outputs: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """The run's task loss (``model.task``; tasks/losses.py) of one head's outputs ``[B, C]`` / ``[B, 1]``."""
        return task_loss(self.model.task, outputs, labels, reduction)

    def fused_loss(self, out: Outputs, labels: torch.Tensor) -> torch.Tensor:
        return self.task_loss(out.fused_logits, labels)

    def source_losses(self, out: Outputs, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``L_0`` and every unimodal ``L_m``, keyed by gradient source (``fused``, modality names)."""
        losses = {FUSED: self.fused_loss(out, labels)}
        for m, logits in out.unimodal_logits.items():
            losses[m] = self.task_loss(logits, labels)
        return losses

    def probe_losses(self, out: Outputs, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Train each unimodal head on *detached* features: it measures, without steering, how
        much each encoder has learnt (the imbalance signal) when the method itself does not use
        unimodal losses. With fusion-slices unimodal logits there is nothing to probe."""
        if self.model.slice_unimodal:
            return {}
        return {f"probe:{m}": self.task_loss(self.model.unimodal_heads[m](z.detach()), labels)
                for m, z in out.features.items()}


def linear_concat_reason(method: str, does: str, model) -> str | None:
    """Why ``model`` (the recipe's ``model`` block) has no linear concat fusion head, for a method whose rule reads
    that head's per-modality blocks (``does``: what the rule does with them), or None."""
    if model.linear_concat_head:
        return None
    return (f"method {method} {does}: set model.fusion: concat and model.fusion_hidden: 0 (they are "
            f"{model.fusion!r} and {model.fusion_hidden})")


__all__ = ["FUSED", "Method", "NoOptions", "StepContext", "StepResult", "linear_concat_reason"]
