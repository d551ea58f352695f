"""Second-stage validation of the ``dataset`` block: options that belong to one dataset."""

from __future__ import annotations

from pydantic import ValidationError

from bogc_cli.data.registry import DATASETS
from bogc_cli.errors import UserError
from bogc_cli.recipe import DatasetBlock, Recipe, StrictModel, options_error


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
        raise UserError(f"{source}: dataset.name {name!r} is not a dataset; valid: {', '.join(DATASETS)}")
    info = DATASETS[name]
    preset = recipe.dataset.preset
    if preset is not None and preset not in info.view_presets:
        if info.view_presets:
            valid = f"valid: {', '.join(info.view_presets)}"
        else:
            valid = f"{name} has no view presets (prepare presets are chosen with `bogc prepare --preset`)"
        raise UserError(f"{source}: dataset.preset {preset!r} is not a preset of {name}; {valid}")
    schema = dataset_option_model(name)
    try:
        schema.model_validate(recipe.dataset_options())
    except ValidationError as exc:
        raise options_error(source, "dataset", exc, schema, name, list(DatasetBlock.model_fields)) from None
