"""``umt``: Uni-Modal Teacher, a joint model whose encoders are distilled from unimodal models' features.

Du, Teng, Li, Liu, Yuan, Wang, Yuan & Zhao, "On Uni-Modal Feature Learning in Supervised Multi-Modal
Learning", ICML 2023 (arXiv:2305.01233; first as Du et al., "Improving Multi-Modal Learning with
Uni-Modal Teachers", arXiv:2106.11059, 2021). Joint training leaves each encoder's uni-modal features
under-learnt (*modality laziness*); UMT trains the joint (late-fusion) model on its fused loss while
each encoder's features are pulled towards those of a unimodal model of the same modality, trained
first and frozen. Reference code: GeWu-Lab/BalanceBenchmark, ``balancemm/trainer/UMT_trainer.py`` with
``configs/trainer_config.yaml`` (``UMT``); the authors' own code was not found. The defaults follow it.

One step, with the student's features ``z_m`` ``[B, d_m]`` (encoder outputs, the reference's
``encoder_result[m]``) and the teacher's ``t_m`` ``[B, d_m]`` (teacher m's encoder on the same inputs,
without gradient):

    L = CE(f, y) + scaling * sum_{m in teachers} MSE(t_m, z_m)

``MSE`` is the mean over the ``B x d_m`` elements (``nn.MSELoss()``); the distillation term is present in
the window ``start_epoch <= e <= end_epoch`` (the reference's 0-based ``current_epoch``: ``epoch_base`` 0),
``CE(f, y)`` alone outside it (separate unimodal heads are then, as always, probes on detached features).
Gradient reaches the student's encoders only (the teachers are frozen).

Teachers (``method.teachers: {modality: RUN_DIR}``): finished ``unimodal`` runs of this tool (``method.name:
unimodal``, ``method.modality: m``), whose ``best.pt`` gives teacher m's encoder; ``{seed}`` in a path becomes
the run's seed, so each seed learns from teachers of its own seed (``fusion/warm_start.py``'s checks: a
missing path, an unfinished run, a run of another kind or modality, other classes or another encoder shape
is refused with exit 2 naming ``method.teachers.<m>``, before anything is written). The reference finds its
teachers by directory convention (the newest ``unimodalTrainer_<m>`` run next to the UMT run) and distils
every modality; here every modality named is distilled and at least one must be (a recipe naming a subset
distils only that subset: the generalisation to M > 2 and to partial teaching). ``bogc reproduce`` sweeps
declare the unimodal cells as the UMT cells' ``needs`` so they train first. The teachers are not part of the
student's checkpoint: a resumed run loads them again from the same runs.

Hyper-parameters (``method.*``): ``scaling`` (10, the reference's ``scaling``), ``start_epoch`` (0) and
``end_epoch`` (80) (its ``modulation_starts`` / ``modulation_ends``), ``teacher_mode`` (``train``: the
reference never calls ``eval()`` on its loaded teachers, so their batch normalisation uses each batch's
statistics and their dropout is active; ``eval``: a fixed teacher from its running statistics),
``teachers`` (none: the run trains them first, below). The reference config's ``alpha: 1`` is read by no line of
its UMT trainer and is not an option here.

Without ``teachers`` (``bogc train recipes/quickstart.yaml --set method.name=umt`` works as it is), the run first
trains one ``unimodal`` run per modality with its own recipe (data, model, optimiser, schedule, epochs, seed) as
ordinary run directories ``<run_dir>/teachers/<modality>/`` (``Method.prerequisite_runs``, trained by
``engine/prerequisites.py``: said in the log, resumed by ``--resume`` like any run, kept when finished, retrained
by ``--overwrite``, listed under ``prerequisites`` in environment.json), then distils from them, as the reference
distils every modality from its ``unimodalTrainer`` runs. ``bogc report`` does not count runs inside another run.
Data-parallel runs need the teachers named (one process trains them first).

Deviations: the teacher is the unimodal run's best-validation checkpoint (the reference loads the first
checkpoint file of the newest run directory); data-parallel, a ``train``-mode teacher normalises with its
process's rows, as the reference's ``DataParallel`` teachers do per device (``eval`` mode: equal to one
process). Any M >= 1 teachers out of M >= 2 modalities.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bogc_cli.errors import UserError
from bogc_cli.fusion.base import Method
from bogc_cli.fusion.warm_start import plan_unimodal_runs, runs_problem
from bogc_cli.models.multimodal import FUSED, MultimodalModel
from bogc_cli.schema import StrictModel

OPTION = "method.teachers"
TEACHERS_DIR = "teachers"  # <run_dir>/teachers/<modality>: the teachers a run trains itself when none is named


class UMTOptions(StrictModel):
    teachers: dict[str, str] = Field(
        default_factory=dict, description="finished unimodal runs whose best.pt encoder teaches each modality: "
        "{<modality>: RUN_DIR}; '{seed}' in a path becomes the run's seed; none: the run first trains one unimodal "
        "run per modality with its own recipe, in <run_dir>/teachers/<modality>")
    scaling: float = Field(10.0, ge=0, description="weight of the feature-distillation MSE (the reference's scaling)")
    start_epoch: int = Field(0, ge=0, description="first epoch (counted from 0) with the distillation term")
    end_epoch: int = Field(80, ge=0, description="last epoch (counted from 0) with the distillation term")
    teacher_mode: Literal["train", "eval"] = Field(
        "train", description="the teachers' batch-norm/dropout mode: train (the reference, batch statistics) or eval")


def distillation_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
    """``sum_m MSE(t_m, z_m)`` over the modalities in ``teacher``: features ``{m: [B, d_m]}``, each MSE the mean over
    its ``B x d_m`` elements (float32 scalar; gradient through ``student`` only)."""
    return torch.stack([F.mse_loss(teacher[m].detach().float(), student[m].float()) for m in teacher]).sum()


class UnimodalTeachers(nn.Module):
    """Frozen copies of unimodal runs' encoders: ``forward(inputs)`` -> ``{m: [B, d_m]}`` for each teacher m,
    computed without gradient."""

    def __init__(self, encoders: dict[str, nn.Module]):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: encoder(inputs[m]) for m, encoder in self.encoders.items()}


def load_teachers(runs: dict[str, str], model: MultimodalModel, seed: int, classes: list[str]) -> UnimodalTeachers:
    """Teacher encoders from ``runs`` (``{modality: RUN_DIR}``): each a copy of ``model``'s encoder of that modality
    with the weights of the run's ``best.pt``. Every entry is checked (``UserError`` naming ``method.teachers.<m>``)
    before any is built; ``model`` is left as it is."""
    encoders = {}
    for key, _, state, pairs in plan_unimodal_runs(OPTION, runs, model, seed, classes, "or correct the path"):
        prefix = f"encoders.{key}."
        encoder = copy.deepcopy(model.encoders[key])
        encoder.load_state_dict({mine[len(prefix):]: state["model"][source] for mine, source in pairs
                                 if mine.startswith(prefix)})
        encoders[key] = encoder
    return UnimodalTeachers(encoders)


class UMT(Method):
    name = "umt"
    summary = ("joint training plus scaling x the MSE between each encoder's features and those of a frozen "
               "unimodal teacher (method.teachers: finished unimodal runs; none named: the run trains them first)")
    Options = UMTOptions
    min_modalities = 2
    modality_note = ("any M: every modality named in method.teachers is distilled (none named: every modality, its "
                     "teacher trained first)")
    fidelity = ("follows GeWu-Lab/BalanceBenchmark UMT_trainer.py (scaling 10, window 0-80, teachers in train "
                "mode): CE(fused) + scaling sum_m MSE(teacher_m, encoder_m); teachers are this tool's unimodal "
                "runs named in method.teachers (or trained first in <run_dir>/teachers); deviation: the teacher is "
                "the run's best.pt")
    epoch_base = 0  # BalanceBenchmark's current_epoch starts at 0

    @classmethod
    def check_config(cls, options: UMTOptions, recipe) -> str | None:
        return runs_problem(OPTION, options.teachers, recipe)

    @classmethod
    def prerequisite_runs(cls, options: UMTOptions, recipe, modalities: list[str]) -> dict:
        """With no ``teachers`` named: one ``unimodal`` run per modality of this recipe (its data, model, optimiser,
        schedule, epochs and seed; no trackers), ``{"teachers/<m>": recipe dict}``."""
        if options.teachers:
            return {}
        runs = {}
        for m in modalities:
            data = recipe.to_dict()
            data["method"] = {"name": "unimodal", "modality": m}
            data["output"] = {**data.get("output", {}), "trackers": []}
            runs[f"{TEACHERS_DIR}/{m}"] = data
        return runs

    @classmethod
    def with_prerequisites(cls, options: UMTOptions, runs: dict) -> UMTOptions:
        """``teachers`` naming the runs just trained (``{"teachers/<m>": run_dir}``), braces escaped for ``{seed}``."""
        teachers = {key.split("/", 1)[1]: str(path).replace("{", "{{").replace("}", "}}") for key, path in runs.items()}
        return options.model_copy(update={"teachers": teachers})

    @classmethod
    def before_training(cls, options: UMTOptions, model, recipe, classes) -> None:
        attach_teachers(model, load_teachers(options.teachers, model, recipe.seed, classes))

    def __init__(self, options: UMTOptions, model, ctx):
        super().__init__(options, model, ctx)
        teachers = getattr(model, "umt_teachers", None)
        if teachers is None:
            raise UserError(f"method umt: no teachers were loaded; set {OPTION} (Method.before_training loads them)")
        self.teachers = teachers[0].to(ctx.device)
        self._targets: dict[str, torch.Tensor] | None = None
        self._logs: dict[str, torch.Tensor] = {}

    def distilling(self) -> bool:
        return self.in_epoch_window(self.options.start_epoch, self.options.end_epoch)

    def step(self, batch):
        # the teachers' features of this batch's inputs, the targets that losses() reads
        if self.distilling():
            self.teachers.train(self.options.teacher_mode == "train")
            with self.ctx.autocast():
                self._targets = self.teachers({m: batch.inputs[m] for m in self.teachers.encoders})
        try:
            return super().step(batch)
        finally:
            self._targets = None

    def losses(self, out, labels):
        ce = self.fused_loss(out, labels)
        if self._targets is None:
            return {FUSED: ce, **self.probe_losses(out, labels)}
        distill = distillation_loss(out.features, self._targets)
        self._logs = {"umt.distill": distill.detach()}
        return {FUSED: ce, **self.probe_losses(out, labels), "distill": self.options.scaling * distill}

    def before_backward(self, out, batch):
        logs, self._logs = self._logs, {}
        return logs


def attach_teachers(model: MultimodalModel, teachers: UnimodalTeachers) -> None:
    """Lend ``teachers`` to the method built on ``model`` without making them part of it (not a submodule: not in
    the student's ``state_dict``, parameters or optimiser)."""
    object.__setattr__(model, "umt_teachers", (teachers,))


METHOD = UMT
