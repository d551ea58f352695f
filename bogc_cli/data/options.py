"""Second-stage validation of the ``dataset`` block: options that belong to one dataset."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from bogc_cli.data.registry import DATASETS
from bogc_cli.errors import UserError
from bogc_cli.schema import StrictModel, options_error
from bogc_cli.yaml_source import where

if TYPE_CHECKING:  # recipe.py validates with this module: importing it at run time would close a circle
    from bogc_cli.recipe import Recipe


class NoOptions(StrictModel):
    pass


def dataset_option_model(name: str) -> type[StrictModel]:
    if name == "synthetic":
        from bogc_cli.data.synthetic import SyntheticOptions

        return SyntheticOptions
    return NoOptions


def validate_dataset_options(recipe: Recipe, source: str) -> None:
    """Check dataset.name, dataset.preset and the dataset's own keys; raise UserError naming the key."""
    name = recipe.dataset.name
    if name not in DATASETS:
        raise UserError(f"{where(source, 'dataset', 'name')}: dataset.name {name!r} is not a dataset; valid: {', '.join(DATASETS)}")
    info = DATASETS[name]
    preset = recipe.dataset.preset
    if preset is not None and preset not in info.view_presets:
        if info.view_presets:
            valid = f"valid: {', '.join(info.view_presets)}"
        else:
            valid = f"{name} has no view presets (prepare presets are chosen with `bogc prepare --preset`)"
        raise UserError(f"{where(source, 'dataset', 'preset')}: dataset.preset {preset!r} is not a preset of {name}; {valid}")
    task = recipe.dataset.task
    if task is not None and task not in info.tasks:
        raise UserError(f"{where(source, 'dataset', 'task')}: dataset.task {task!r}: {name} data is "
                        f"{' or '.join(info.tasks)} (`bogc list` shows each dataset's task types); remove "
                        "dataset.task or choose a dataset with such targets")
    _check_select_metric(recipe, source)
    schema = dataset_option_model(name)
    try:
        schema.model_validate(recipe.dataset_options())
    except ValidationError as exc:
        # the dataset block's common keys (name, root, preset, ...) come from its schema, recipe.DatasetBlock
        raise options_error(source, "dataset", exc, schema, name, list(type(recipe.dataset).model_fields)) from None


def known_task(recipe: Recipe) -> str | None:
    """The run's task when the recipe alone tells it: ``dataset.task``, or the dataset's only task type;
    None when it depends on how the data was prepared (read from its manifest when the run is built)."""
    if recipe.dataset.task is not None:
        return recipe.dataset.task
    tasks = DATASETS[recipe.dataset.name].tasks if recipe.dataset.name in DATASETS else ()
    return tasks[0] if len(tasks) == 1 else None


def _check_select_metric(recipe: Recipe, source: str) -> None:
    from bogc_cli.tasks import SELECTION, check_select_metric

    metric = recipe.train.select_metric
    if metric is None:
        return
    task = known_task(recipe)
    if task is not None:
        reason = check_select_metric(task, metric)
    elif not any(metric in s.metrics for s in SELECTION.values()):
        reason = ("train.select_metric " + repr(metric) + " is not a metric of any task; choose one of " +
                  "; ".join(f"{t}: {', '.join(s.metrics)}" for t, s in SELECTION.items()))
    else:
        reason = None
    if reason:
        raise UserError(f"{where(source, 'train', 'select_metric')}: {reason}")
