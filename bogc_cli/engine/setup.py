"""Turn a validated recipe into the pieces of a run: data, model, method class and options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bogc_cli.data.bundle import DataBundle, dataset_root, load_data
from bogc_cli.engine.optim import check_backbone_lr
from bogc_cli.errors import UserError
from bogc_cli.fusion import Method, check_method_task, method_class, method_label, method_options
from bogc_cli.models.build import build_model
from bogc_cli.models.encoder_options import with_absolute_paths
from bogc_cli.models.multimodal import MultimodalModel
from bogc_cli.recipe import Recipe, StrictModel
from bogc_cli.tasks import TaskSpec, check_select_metric, resolve_task


@dataclass
class RunParts:
    data: DataBundle
    model: MultimodalModel
    method_cls: type[Method]
    options: StrictModel
    # runs trained first inside this run's directory (Method.prerequisite_runs): {name: run_dir}, for environment.json
    prerequisites: dict[str, str] = field(default_factory=dict)


def run_dir_for(recipe: Recipe, seed: int | None = None) -> Path:
    seed = recipe.seed if seed is None else seed
    return Path(recipe.output.dir) / recipe.experiment / recipe.dataset_label() / method_label(recipe) / f"seed{seed}"


def run_identity(recipe: Recipe) -> dict:
    """The keys that identify a run in eval.json and in reports, and the protocol it was trained under."""
    return {"experiment": recipe.experiment, "dataset": recipe.dataset_label(), "method": method_label(recipe),
            "seed": recipe.seed, "protocol": recipe.protocol}


def build_parts(recipe: Recipe, load_weights: bool = True) -> RunParts:
    """Load the data the method needs and build the model; refuse impossible combinations first.

    ``load_weights``: pretrained encoders read their weights files (every file checked here, before a run
    writes anything); False when a checkpoint will fill the model (``eval``, ``missing-modality``)."""
    cls = method_class(recipe.method.name)
    options = method_options(recipe)
    data = load_data(recipe)
    available = list(data.modalities)
    reason = cls.check_modalities(options, available)
    if reason:
        raise UserError(reason)
    used = cls.used_modalities(options, available)
    if used != available:
        data = load_data(recipe, use=used)
    task = run_task(recipe, data)
    model = build_model(recipe.model, data.modalities, data.num_classes,
                        all_modalities=list(data.manifest.modalities), load_weights=load_weights, task=task)
    cls.adapt_model(options, model)
    check_backbone_lr(recipe.optim, model.backbone_parameters())
    return RunParts(data, model, cls, options)


def run_task(recipe: Recipe, data: DataBundle) -> TaskSpec:
    """The run's task: the data's (its manifest's ``task``), which ``dataset.task`` may only restate; the
    method must be defined for it and ``train.select_metric`` must be one of its metrics (``UserError``
    otherwise, before anything is written: recipe validation checks what the recipe alone tells)."""
    where = str(dataset_root(recipe)) if recipe.dataset.name != "synthetic" else "(generated)"
    task = resolve_task(data.manifest.task, recipe.dataset.task, recipe.dataset.name, where)
    check_method_task(recipe, task, f"the {recipe.dataset.name} data at {where} is {task} data")
    reason = check_select_metric(task, recipe.train.select_metric)
    if reason:
        raise UserError(reason)
    return TaskSpec(task, recipe.train.regression_loss, recipe.train.select_metric)


def resolved_recipe(recipe: Recipe) -> Recipe:
    """The recipe with defaults of the chosen dataset and method filled in and the data path absolute."""
    from bogc_cli.data.options import dataset_option_model

    data = recipe.to_dict()
    ds_model = dataset_option_model(recipe.dataset.name)
    data["dataset"].update(ds_model.model_validate(recipe.dataset_options()).model_dump(mode="json"))
    if recipe.dataset.name != "synthetic":
        data["dataset"]["root"] = str(dataset_root(recipe).resolve())
    data["model"]["encoders"] = with_absolute_paths(data["model"]["encoders"])  # weights files, model directories
    data["method"].update(method_options(recipe).model_dump(mode="json"))
    return Recipe.model_validate(data)


__all__ = ["RunParts", "build_parts", "resolved_recipe", "run_dir_for", "run_identity", "run_task"]
