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
    schema = dataset_option_model(name)
    try:
        schema.model_validate(recipe.dataset_options())
    except ValidationError as exc:
        # the dataset block's common keys (name, root, preset, ...) come from its schema, recipe.DatasetBlock
        raise options_error(source, "dataset", exc, schema, name, list(type(recipe.dataset).model_fields)) from None
