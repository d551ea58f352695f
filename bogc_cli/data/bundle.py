"""Open the dataset a recipe names: synthetic, a prepared cache, or a raw arrays folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bogc_cli.data.cache import (Manifest, ModalitySpec, SplitArrays, carve_validation, load_split, read_manifest,
                                 summarise_skipped)
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
    notes: list[str] = field(default_factory=list)
    """Warnings about the data for the user (shown when a run starts): carve-outs, classes missing from a split."""

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
    """Read (or generate) the dataset; ``use`` restricts modalities further (a method's choice).

    Raises ``UserError`` when a split the run needs is empty, or when ``dataset.kinds`` cannot apply."""
    name = recipe.dataset.name
    notes: list[str] = []
    root = None
    if name == "synthetic":
        from bogc_cli.data.synthetic import SyntheticOptions, generate

        _refuse_kinds(recipe, "the synthetic data's kinds are fixed (audio, image, vector)")
        manifest, splits = generate(SyntheticOptions.model_validate(recipe.dataset_options()))
    else:
        root = dataset_root(recipe)
        if name == "arrays" and not (root / "manifest.json").is_file():
            from bogc_cli.data.arrays import read_arrays_folder

            if not root.is_dir():
                raise UserError(f"arrays folder {root} does not exist; set dataset.root to your folder")
            manifest, splits = read_arrays_folder(root, kinds=recipe.dataset.kinds,
                                                  task=recipe.dataset.task or "classification",
                                                  val_fraction=recipe.dataset.val_fraction,
                                                  seed=recipe.dataset.split_seed)
        else:
            manifest = read_manifest(root)
            if name != "arrays" and manifest.dataset != name:
                raise UserError(f"{root} holds a prepared {manifest.dataset!r} dataset, but the recipe says "
                                f"dataset.name {name!r}; fix dataset.root or dataset.name")
            _check_kinds(recipe, manifest, root)
            splits = {s: load_split(root, manifest, s) for s in manifest.splits}
        notes += manifest.warnings
    splits = _ensure_validation(splits, recipe, manifest, root, notes)
    wanted = requested_modalities(recipe, list(manifest.modalities))
    if use is not None:
        bad = [m for m in use if m not in wanted]
        if bad:
            raise UserError(f"the method uses modalities {bad} that this run's data does not have; "
                            f"available: {', '.join(wanted)}")
        wanted = [m for m in wanted if m in use]
    splits = {s: SplitArrays({m: a.inputs[m] for m in wanted}, a.labels, a.ids) for s, a in splits.items()}
    return DataBundle(name, list(manifest.classes), {m: manifest.modalities[m] for m in wanted}, splits, manifest,
                      notes)


def _refuse_kinds(recipe: Recipe, why: str) -> None:
    if recipe.dataset.kinds:
        raise UserError(f"dataset.kinds is set, but {why}: remove dataset.kinds (it applies to arrays data only)")


def _check_kinds(recipe: Recipe, manifest: Manifest, root: Path) -> None:
    """``dataset.kinds`` on a prepared cache must agree with the kinds it was prepared with (never ignored)."""
    given = recipe.dataset.kinds or {}
    if not given:
        return
    if manifest.dataset != "arrays":
        _refuse_kinds(recipe, f"the {manifest.dataset} cache at {root} fixes each modality's kind")
    unknown = sorted(set(given) - set(manifest.modalities))
    if unknown:
        raise UserError(f"dataset.kinds names {', '.join(unknown)}, but the cache at {root} has only the modalities "
                        f"{', '.join(manifest.modalities)}")
    differ = {m: k for m, k in given.items() if manifest.modalities[m].kind != k}
    if differ:
        stored = ", ".join(f"{m} as {manifest.modalities[m].kind} {manifest.modalities[m].shape}" for m in differ)
        wanted = ",".join(f"{m}={k}" for m, k in differ.items())
        raise UserError(f"dataset.kinds asks for {wanted}, but the cache at {root} was prepared with {stored}: "
                        f"prepare it again with `bogc prepare arrays --kinds {wanted} --overwrite ...`, or remove "
                        "dataset.kinds")


def _ensure_validation(splits: dict[str, SplitArrays], recipe: Recipe, manifest: Manifest, root: Path | None,
                       notes: list[str]) -> dict[str, SplitArrays]:
    """The splits with a validation split (carved from train when the data has none, said in ``notes``);
    an empty train, val or test split is a ``UserError``."""
    where = f"the {recipe.dataset.name} data" + (f" at {root}" if root is not None else "")
    for required in ("train", "test"):
        if required not in splits:
            raise UserError(f"{where} has no {required!r} split; prepare it again")
        if len(splits[required]) == 0:
            why = f" ({summarise_skipped(manifest.skipped)})" if manifest.skipped else ""
            raise UserError(f"{where} has an empty {required} split{why}: there is nothing to "
                            f"{'train on' if required == 'train' else 'test on'}; fix the raw data and prepare it "
                            "again (`bogc prepare ... --overwrite`)")
    if "val" in splits and len(splits["val"]) > 0:
        return splits
    fraction, seed = recipe.dataset.val_fraction, recipe.dataset.split_seed
    train_idx, val_idx = carve_validation(splits["train"].labels, fraction, seed)
    stratified = manifest.task == "classification"  # other targets have no class to stratify by (carve_validation)
    if len(val_idx) == 0:
        raise UserError(f"{where} has no validation split and its {len(splits['train'])} training samples are too "
                        "few to carve one" + (" (every class keeps a training sample)" if stratified else "") +
                        ": add training samples or a val split")
    notes.append(f"{where} has no validation split: carving {len(val_idx)} of its {len(splits['train'])} training "
                 f"samples (dataset.val_fraction {fraction:g}, split_seed {seed}"
                 + (", stratified" if stratified else "") + ") to pick the best epoch")
    return {**splits, "train": splits["train"].subset(train_idx), "val": splits["train"].subset(val_idx)}
