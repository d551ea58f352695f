"""``i2m2``: inter- and intra-modality modelling as a normalised product of experts.

Madaan et al., "Jointly Modeling Inter- & Intra-Modality Dependencies for Multi-modal
Learning", NeurIPS 2024. The prediction is the product of one expert per modality (intra-modality
dependencies) and the joint expert (the fusion model, inter-modality dependencies), renormalised:

    log p(y | x) = log_softmax( log_softmax f_joint(x) + sum_m log_softmax f_m(x_m) )

and the whole product is trained end to end with cross-entropy on it. Any number of modalities.
``adapt_model`` switches the model's prediction rule, so ``bogc eval`` and ``missing-modality``
predict with the same product.

Reference code (divyam3897/I2M2, ``avmnist_and_mimic/avmnist_main.py --model_type
inter_and_intra_modality`` and ``training_structures/inter_and_intra_modality.py``), which the
defaults follow:

- the experts are separate networks: the joint model (its encoders, fusion and head) and one
  unimodal model per modality with an encoder of its own. Here (``experts: independent``, the
  default) ``adapt_model`` gives each unimodal head an encoder of its own, of the joint model's
  encoder kind and size, so the model holds about twice the encoder parameters of ``joint``.
  ``experts: shared`` keeps the earlier, cheaper form: the unimodal heads read the joint model's
  encoders (one encoder per modality, trained by all the experts at once; not the paper's model).
- the experts are warm-started from separately trained checkpoints of the same seed (the joint
  model's and each unimodal model's best), then trained together. Here ``warm_start`` maps
  ``joint`` and modality names to this tool's own run directories, whose ``best.pt`` supplies
  the weights: ``joint`` -> the encoders and fusion head (a multimodal run of the same model,
  e.g. method ``joint``); ``m`` -> expert m's encoder and head (a ``unimodal`` run of modality
  m: its encoder, and its fusion head, which for one modality is the linear classifier over
  that encoder). ``{seed}`` in a path is replaced by the run's seed, so each seed starts from the
  runs of its own seed, as the reference does. A path that is missing, a run that is not
  finished (no ``eval.json``), or a model that does not match (shapes, classes, modality) is
  refused with exit 2 before anything is written. Without ``warm_start`` every expert starts
  from scratch. Two stages, as the reference trains: first ``joint`` and ``unimodal`` runs,
  then ``i2m2`` with ``warm_start`` pointing at them (README "Methods").
- SGD, lr 0.01, weight decay 1e-4, the gradient norm of all parameters clipped at 8
  (``clip_val=8``), 30 epochs, the best validation accuracy kept: recipe settings
  (``optim.grad_clip: 8`` etc. in ``recipes/*/i2m2.yaml``), not part of the method.

Deliberate differences: the unimodal experts' heads are this tool's linear unimodal heads (the
reference's AV-MNIST experts end in a 100-unit MLP) and their encoders are the joint model's size
(the reference's AV-MNIST unimodal LeNets are narrower than the joint one's); the reference stops
early after 10 epochs without improvement, here ``train.epochs`` run. The unimodal heads need
their own parameters (``model.unimodal_logits: heads``): slices of the fusion head would not be
independent experts.

Options (``method.*``): ``experts`` (``independent``), ``warm_start`` (none: ``{}``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from bogc_cli.errors import UserError
from bogc_cli.fusion.base import Method
from bogc_cli.fusion.warm_start import (check_classes, copy_planned, finished_checkpoint, runs_problem,
                                       warm_start_dir)
from bogc_cli.models.multimodal import FUSED, MultimodalModel
from bogc_cli.schema import StrictModel

JOINT = "joint"


class I2M2Options(StrictModel):
    experts: Literal["independent", "shared"] = Field(
        "independent", description="unimodal experts with encoders of their own (the reference's separate networks) "
        "or reading the joint model's encoders (cheaper; not the paper's model)")
    warm_start: dict[str, str] = Field(
        default_factory=dict, description="run directories whose best.pt starts each expert: {joint: DIR, <modality>: "
        "DIR}; '{seed}' in a path becomes the run's seed; {}: every expert from scratch")


# ------------------------------------------------------------------ warm start
def warm_start_pairs(key: str, state: dict, model: MultimodalModel, run_dir: Path) -> list[tuple[str, str]]:
    """``(name in this model, name in the checkpoint)`` of every tensor expert ``key`` takes from ``state``.

    ``joint``: the encoders and the fusion head (and the encoders' running feature means).
    modality ``m``: a ``unimodal`` run of m gives expert m's encoder, its classifier (the run's
    linear fusion head over that one modality) and its running feature mean."""
    where = f"method.warm_start.{key}"
    ours = model.state_dict()
    if key == JOINT:
        pairs = [(n, n) for n in ours if n.startswith(("encoders.", "fusion_head.", "feature_mean_"))]
    else:
        method = state["recipe"].get("method", {})
        if method.get("name") != "unimodal" or method.get("modality") != key:
            raise UserError(f"{where}: {run_dir} is a {method.get('name')!r} run, not a unimodal run of {key!r} "
                            f"(method.name: unimodal, method.modality: {key})")
        if "fusion_head.net.weight" not in state["model"] or state["model"]["fusion_head.net.weight"].dim() != 2:
            raise UserError(f"{where}: the classifier of {run_dir} is not one linear layer; train that unimodal run "
                            "with model.fusion: concat and model.fusion_hidden: 0")
        expert = "expert_encoders." if len(model.expert_encoders) else "encoders."
        pairs = [(n, f"encoders.{n[len(expert):]}") for n in ours if n.startswith(f"{expert}{key}.")]
        pairs += [(f"unimodal_heads.{key}.weight", "fusion_head.net.weight"),
                  (f"unimodal_heads.{key}.bias", "fusion_head.net.bias")]
        if len(model.expert_encoders):
            pairs.append((f"expert_feature_mean_{key}", f"feature_mean_{key}"))
    theirs = state["model"]
    for mine, source in pairs:
        if source not in theirs:
            raise UserError(f"{where}: the model in {run_dir} does not match this run's: it has no {source} "
                            f"(needed for {mine}); train it with this run's model block and modalities")
        if tuple(theirs[source].shape) != tuple(ours[mine].shape):
            raise UserError(f"{where}: the model in {run_dir} does not match this run's: {source} is "
                            f"{list(theirs[source].shape)} there, {mine} is {list(ours[mine].shape)} here; "
                            "train it with this run's model block")
    return pairs


def load_warm_start(options: I2M2Options, model: MultimodalModel, seed: int, classes: list[str]) -> dict[str, Path]:
    """Check every ``warm_start`` entry, then copy the weights in; returns ``{key: run directory}``.

    Every entry is checked before any weight is copied, so a refused warm start leaves the model as built."""
    valid = [JOINT, *model.modalities]
    plan = []
    for key, path in options.warm_start.items():
        if key not in valid:
            raise UserError(f"method.warm_start: {key!r} is neither 'joint' nor a modality of this run; "
                            f"valid keys: {', '.join(valid)}")
        run_dir = warm_start_dir(path, seed)
        state = finished_checkpoint(f"method.warm_start.{key}", "joint (multimodal)" if key == JOINT else
                                    f"unimodal ({key})", run_dir)
        check_classes(f"method.warm_start.{key}", run_dir, state, classes)
        plan.append((key, run_dir, state, warm_start_pairs(key, state, model, run_dir)))
    return copy_planned(model, plan)


class I2M2(Method):
    name = "i2m2"
    summary = ("product of experts: log_softmax(joint) + sum_m log_softmax(expert_m), renormalised, trained end to "
               "end; independent experts, optional warm start from this tool's runs")
    Options = I2M2Options
    min_modalities = 2
    modality_note = "the product takes one expert per modality for any M"
    fidelity = ("follows divyam3897/I2M2 avmnist inter_and_intra_modality: separate experts with own encoders "
                "(experts: independent), warm start from joint/unimodal runs (warm_start), clip 8 and SGD 0.01 in "
                "recipes/*/i2m2.yaml; deviations: linear expert heads, experts' encoders the joint model's size, no "
                "early stop; experts: shared is the cheaper non-reference form")

    @classmethod
    def check_config(cls, options: I2M2Options, recipe) -> str | None:
        if recipe.model.unimodal_logits != "heads":
            return ("method i2m2 needs one expert head per modality: set model.unimodal_logits: heads "
                    f"(it is {recipe.model.unimodal_logits!r})")
        problem = runs_problem("method.warm_start", options.warm_start, recipe, also=(JOINT,))
        if problem:
            return problem
        for key in options.warm_start:
            if options.experts == "shared" and key != JOINT:
                return (f"method.warm_start.{key}: with experts: shared the unimodal experts read the joint "
                        "encoders, so only 'joint' can be warm-started; set method.experts: independent")
        return None

    @classmethod
    def adapt_model(cls, options: I2M2Options, model) -> None:
        model.prediction = "product-of-experts"
        if options.experts == "independent" and not len(model.expert_encoders):
            model.add_expert_encoders()

    @classmethod
    def before_training(cls, options: I2M2Options, model, recipe, classes) -> None:
        if options.warm_start:
            load_warm_start(options, model, recipe.seed, classes)

    def losses(self, out, labels):
        # out.fused_logits is already the normalised product (log-probabilities)
        return {FUSED: self.fused_loss(out, labels)}


METHOD = I2M2
