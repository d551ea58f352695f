"""Open the dataset a recipe names: synthetic, a prepared cache, or a raw arrays folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bogc_cli.data.cache import Manifest, ModalitySpec, SplitArrays, carve_validation, load_split, read_manifest
from bogc_cli.data.registry import DATASETS
from bogc_cli.errors import UserError
from bogc_cli.recipe import Recipe


@dataclass
class DataBundle:
    """The splits of one dataset restricted to the modalities a run uses."""

    name: str
    classes: list[str]
    modalities: dict[str, ModalitySpec]
    splits: dict[str, SplitArrays]
    manifest: Manifest

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def dataset_root(recipe: Recipe) -> Path:
    return Path(recipe.dataset.root or DATASETS[recipe.dataset.name].default_root).expanduser()


def requested_modalities(recipe: Recipe, available: list[str]) -> list[str]:
    """Modalities named by dataset.modalities or the view preset (default all), checked against the data."""
    d = recipe.dataset
    if d.modalities is not None:
        wanted, key = list(d.modalities), "dataset.modalities"
    elif d.preset is not None:
        wanted, key = list(DATASETS[d.name].view_presets[d.preset]), f"dataset.preset {d.preset!r}"
    else:
        return list(available)
    missing = [m for m in wanted if m not in available]
    if missing:
        raise UserError(f"{key} names modalities {missing} that the {d.name} data lacks; "
                        f"available: {', '.join(available)}")
    if not wanted:
        raise UserError(f"{key} is empty; choose from: {', '.join(available)}")
    return wanted


def load_data(recipe: Recipe, use: list[str] | None = None) -> DataBundle:
    """Read (or generate) the dataset; ``use`` restricts modalities further (a method's choice)."""
    name = recipe.dataset.name
    if name == "synthetic":
        from bogc_cli.data.synthetic import SyntheticOptions, generate

        manifest, splits = generate(SyntheticOptions.model_validate(recipe.dataset_options()))
    else:
        root = dataset_root(recipe)
        if name == "arrays" and not (root / "manifest.json").is_file():
            from bogc_cli.data.arrays import read_arrays_folder

            if not root.is_dir():
                raise UserError(f"arrays folder {root} does not exist; set dataset.root to your folder")
            manifest, splits = read_arrays_folder(root, kinds=recipe.dataset.kinds,
                                                  val_fraction=recipe.dataset.val_fraction,
                                                  seed=recipe.dataset.split_seed)
        else:
            manifest = read_manifest(root)
            if name != "arrays" and manifest.dataset != name:
                raise UserError(f"{root} holds a prepared {manifest.dataset!r} dataset, but the recipe says "
                                f"dataset.name {name!r}; fix dataset.root or dataset.name")
            splits = {s: load_split(root, manifest, s) for s in manifest.splits}
    splits = _ensure_validation(splits, recipe)
    wanted = requested_modalities(recipe, list(manifest.modalities))
    if use is not None:
        bad = [m for m in use if m not in wanted]
        if bad:
            raise UserError(f"the method uses modalities {bad} that this run's data does not have; "
                            f"available: {', '.join(wanted)}")
        wanted = [m for m in wanted if m in use]
    splits = {s: SplitArrays({m: a.inputs[m] for m in wanted}, a.labels, a.ids) for s, a in splits.items()}
    return DataBundle(name, list(manifest.classes), {m: manifest.modalities[m] for m in wanted}, splits, manifest)


def _ensure_validation(splits: dict[str, SplitArrays], recipe: Recipe) -> dict[str, SplitArrays]:
    for required in ("train", "test"):
        if required not in splits:
            raise UserError(f"the {recipe.dataset.name} data has no {required!r} split; prepare it again")
    if "val" in splits and len(splits["val"]) > 0:
        return splits
    train_idx, val_idx = carve_validation(splits["train"].labels, recipe.dataset.val_fraction,
                                          recipe.dataset.split_seed)
    return {**splits, "train": splits["train"].subset(train_idx), "val": splits["train"].subset(val_idx)}
