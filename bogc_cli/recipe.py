"""Recipes: the YAML file that says everything a run needs.

A recipe is validated up front, before any data is read or any model built: unknown keys,
wrong types and invalid choices each produce a ``UserError`` with one line per mistake that
names the key, what is valid and where it was written (the file and line, or the ``--set``).
``--set a.b=c`` overrides are applied to the raw mapping before validation, so they are checked
exactly like keys in the file.

Types are strict (pydantic's strict mode): ``epochs: yes`` or ``flip: 1`` are refused rather than
read as 1 or true, and ``"5"`` (text) is not a number; a key given twice in the file is refused
(``yaml_source``). Values that become folder names of a run's path (``experiment``,
``dataset.label``, ``method.tag``, the method's label) must be one plain folder name each, and seeds
lie in ``0 .. 2**32 - 1`` (NumPy's seed range).

Blocks whose valid keys depend on a choice (``dataset`` on ``dataset.name``, ``method`` on
``method.name``) are checked in two stages: the common keys here, then the chosen
dataset's or method's own option model (``data/options.py``, ``fusion/__init__.py``). Those
option models build on ``schema.py``, never on this module, so the dependency runs one way:
recipe -> options -> schema.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from bogc_cli.errors import UserError
from bogc_cli.models.encoder_options import EncoderEntry
from bogc_cli.schema import (SEED_MAX, Kind, OpenModel, PathPart, Seed, StrictModel, format_validation_error,
                             path_part_problem)
from bogc_cli.yaml_source import Source, load_yaml, read_yaml_file, where

#: Two numbers, written as a YAML list ``[0.08, 1.0]`` (strict mode alone would take only a Python tuple).
Pair = Annotated[tuple[float, float], BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)]



class DatasetBlock(OpenModel):
    name: str = Field(description="dataset name (see `bogc list`)")
    root: str | None = Field(None, description="prepared cache or arrays folder; default data/<name>")
    preset: str | None = Field(None, description="view preset choosing modalities (mfeat: all6, weak3)")
    modalities: list[str] | None = Field(None, description="subset of the dataset's modalities to use")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="validation carve-out when a dataset has none")
    split_seed: Seed = Field(0, description="seed of that carve-out (fixed across training seeds)")
    kinds: dict[str, Kind] | None = Field(None, description="arrays: modality kind overrides")
    label: PathPart | None = Field(None, description="name in reports and run paths; default name[-preset]")
    task: Literal["classification", "multilabel", "regression"] | None = Field(
        None, description="the task type; default the data's (its manifest's task): a recipe may only restate it")


class ModelBlock(StrictModel):
    encoders: dict[str, EncoderEntry] | str | None = Field(
        None, description="encoder per modality (a name, or a block {name, weights, path, freeze, pooling, "
        "normalize} for pretrained encoders), or one name for all; default by kind (audio/image: cnn-small, "
        "video: resnet18, vector: mlp, sequence: transformer, text: text-transformer)")
    feature_dim: int = Field(128, gt=0, description="feature size of cnn-small and mlp encoders")
    hidden_dim: int = Field(256, gt=0, description="hidden size of mlp encoders")
    mlp_layers: int = Field(2, ge=1, description="linear layers in an mlp encoder")
    cnn_channels: list[int] = Field([32, 64, 128], min_length=1, description="cnn-small conv widths")
    cnn_pool: int = Field(4, ge=1, description="cnn-small: side of the pooled grid before the projection")
    dropout: float = Field(0.0, ge=0, lt=1)
    fusion: Literal["concat", "sum", "film", "gated"] = "concat"
    fusion_hidden: int = Field(0, ge=0, description="hidden layer in the concat head (0 = linear)")
    unimodal_logits: Literal["heads", "fusion-slices"] = Field(
        "heads", description="separate unimodal heads, or slices of a linear concat head (OGM-GE style)")
    fill: Literal["zero-input", "zero-feature", "mean-feature"] = Field(
        "zero-feature", description="how a missing modality is filled")

    @property
    def linear_concat_head(self) -> bool:
        """Whether the fusion head is one linear layer over the concatenated features."""
        return self.fusion == "concat" and not self.fusion_hidden


class MethodBlock(OpenModel):
    name: str = Field("joint", description="training method (see `bogc list`)")
    tag: PathPart | None = Field(None, description="suffix for the method's name in results (ablations)")


class OptimBlock(StrictModel):
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    schedule: Literal["none", "step", "cosine"] = "none"
    step_size: int = Field(30, gt=0, description="step schedule: epochs between decays")
    milestones: list[int] | None = Field(None, description="step schedule: decay at these epochs instead")
    gamma: float = Field(0.1, gt=0, le=1, description="step schedule: decay factor")
    min_lr: float = Field(0.0, ge=0, description="cosine schedule: final learning rate")
    grad_clip: float | None = Field(None, gt=0, description="clip the global gradient norm")
    backbone_lr: float | None = Field(None, gt=0, description="learning rate of pretrained encoders (those with "
                                      "weights or path in model.encoders); default optim.lr")


class AugmentBlock(StrictModel):
    """Training augmentation done on the device (bogc_cli/data/augment.py); everything off by default."""

    crop_scale: Pair | None = Field(
        None, description="image/video: random resized crop keeping this range of the frame's area, e.g. "
        "[0.08, 1.0] (torchvision's default); null: no crop")
    crop_ratio: Pair = Field((3 / 4, 4 / 3), description="aspect-ratio range of the crops")
    flip: bool = Field(False, description="image/video: horizontal flip with probability 1/2")
    per_frame: bool = Field(False, description="video: a crop and flip per frame, as OGM-GE's CREMA-D loader "
                            "draws them (default: one per clip, so motion stays coherent)")
    freq_mask: int = Field(0, ge=0, description="audio: widest frequency mask in bins (0: none)")
    time_mask: int = Field(0, ge=0, description="audio: widest time mask in frames (0: none)")
    masks: int = Field(1, ge=1, description="audio: masks of each kind per sample")

    @model_validator(mode="after")
    def _ranges(self) -> "AugmentBlock":
        for key in ("crop_scale", "crop_ratio"):
            lo_hi = getattr(self, key)
            if lo_hi is not None and not 0 < lo_hi[0] <= lo_hi[1]:
                raise ValueError(f"{key} must be [low, high] with 0 < low <= high, not {list(lo_hi)}")
        if self.crop_scale is not None and self.crop_scale[1] > 1:
            raise ValueError(f"crop_scale is a fraction of the frame's area: at most 1, not {self.crop_scale[1]}")
        return self

    @property
    def active(self) -> bool:
        return self.crop_scale is not None or self.flip or self.freq_mask > 0 or self.time_mask > 0


class TrainBlock(StrictModel):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0)
    eval_batch_size: int = Field(256, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 autocast on CUDA")
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="DataLoader worker processes; auto: none on the CPU (slicing memory-mapped arrays "
        "is cheap), on CUDA min(8, CPU cores / processes - 1)")
    augment: AugmentBlock = Field(AugmentBlock(), description="augmentation on the device (off by default)")
    channels_last: bool | Literal["auto"] = Field("auto", description="channels-last memory format for the "
                                                  "model (faster convolutions on tensor cores); auto: on CUDA")
    compile: bool = Field(False, description="torch.compile each encoder (also `bogc train --compile`)")
    fused_optimizer: bool | Literal["auto"] = Field("auto", description="torch's fused optimizer kernels; "
                                                    "auto: on CUDA")
    deterministic: bool = True
    conflict_every: int = Field(50, ge=0, description="sample the cosine between the fusion loss's and each "
                                "modality loss's gradient on that modality's encoder every this many steps "
                                "(conflict.cos.<m> in metrics.jsonl; engine/conflict.py); 0: off")
    max_bad_steps: int = Field(10, ge=1, description="stop after this many steps in a row whose loss or gradient "
                               "is NaN/inf (each such step is skipped and counted)")
    regression_loss: Literal["l1", "mse"] = Field("l1", description="regression runs: L1 (MulT's and CGGM's for "
                                                  "CMU-MOSI) or mean squared error")
    select_metric: str | None = Field(None, description="validation metric best.pt is chosen on; default: "
                                      "accuracy (classification), micro_f1 (multilabel), mae (regression, lower "
                                      "is better)")
    modality_dropout: dict[str, Annotated[float, Field(ge=0, lt=1)]] | Annotated[float, Field(ge=0, lt=1)] | None = \
        Field(None, description="robustness training: {modality: p} (or one p for every modality), each training "
              "sample loses that modality's input (zeroed, as model.fill zero-input) with probability p")


TrackerName = Literal["tensorboard", "mlflow", "wandb"]


class OutputBlock(StrictModel):
    dir: str = Field("results", description="results root; runs go to <dir>/<experiment>/<dataset>/<method>/seed<N>")
    trackers: list[TrackerName] = Field(
        [], description="experiment trackers the run also writes to (pip install -e '.[track]'): tensorboard "
        "(event files in the run directory), mlflow (local SQLite store <dir>/<experiment>/mlflow.db unless "
        "mlflow_uri or MLFLOW_TRACKING_URI names another), wandb (offline unless WANDB_MODE says otherwise)")
    log_every_n_steps: int = Field(50, ge=0, description="trackers: the step loss and the method's per-step values "
                                   "every N training steps (0: per epoch only)")
    mlflow_uri: str | None = Field(None, description="mlflow: tracking URI (a server, a database); default: "
                                   "MLFLOW_TRACKING_URI, else sqlite:///<dir>/<experiment>/mlflow.db")
    wandb_project: str = Field("bogc", min_length=1, description="wandb: the project runs are logged to")

    @field_validator("trackers", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        """``--set output.trackers=tensorboard,mlflow`` as well as a YAML list."""
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _distinct_trackers(self) -> "OutputBlock":
        if len(set(self.trackers)) != len(self.trackers):
            raise ValueError(f"trackers {self.trackers}: name each tracker once")
        return self


PROTOCOLS: dict[str, str] = {
    "as-published": "each method under its reference code's own protocol (recipes/<dataset>/<method>.yaml)",
    "common": "every method under one shared protocol, keeping only the keys its rule owns "
              "(recipes/paper/common.yaml)",
    "custom": "the recipe's own settings",
}
"""Values of the top-level ``protocol`` key: how a run's optimiser, schedule, epochs, batch and clip were chosen.
Reports name it in every table and keep runs of different protocols in separate tables."""

Protocol = Literal["as-published", "common", "custom"]


class Recipe(StrictModel):
    experiment: PathPart = "default"
    protocol: Protocol = Field("custom", description="how this run's training set-up was chosen, named in reports: "
                               "as-published (its method's reference protocol), common (the shared one of "
                               "recipes/paper/common.yaml), custom")
    seed: Seed = 0
    seeds: list[Seed] | None = Field(None, min_length=1, description="several seeds: one run each")
    dataset: DatasetBlock
    model: ModelBlock = ModelBlock()
    method: MethodBlock = MethodBlock()
    optim: OptimBlock = OptimBlock()
    train: TrainBlock = TrainBlock()
    output: OutputBlock = OutputBlock()

    @model_validator(mode="after")
    def _unique_seeds(self) -> "Recipe":
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            twice = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
            raise ValueError(f"seeds must be distinct: {', '.join(map(str, twice))} given twice (each seed is one run)")
        return self

    def run_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds is not None else [self.seed]

    def for_seed(self, seed: int) -> "Recipe":
        """The single-run recipe for one seed (what is saved in the run directory)."""
        return self.model_copy(update={"seed": seed, "seeds": None}, deep=True)

    def dataset_label(self) -> str:
        d = self.dataset
        return d.label or (f"{d.name}-{d.preset}" if d.preset else d.name)

    def dataset_options(self) -> dict[str, Any]:
        return dict(self.dataset.model_extra or {})

    def method_options(self) -> dict[str, Any]:
        return dict(self.method.model_extra or {})

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        if data.get("seeds") is None:
            data.pop("seeds", None)
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------- loading and overrides


def check_seeds(seeds: list[int], option: str) -> list[int]:
    """Refuse seeds outside ``0 .. SEED_MAX`` and repeated seeds, naming ``option`` (``--seeds``, ``seeds``)."""
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= SEED_MAX]
    if bad:
        raise UserError(f"{option} {', '.join(map(str, bad))}: a seed is an integer from 0 to {SEED_MAX}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise UserError(f"{option} {','.join(map(str, seeds))}: seed {', '.join(map(str, repeated))} is given twice; "
                        "each seed is one run, give each once")
    return list(seeds)


def parse_overrides(pairs: list[str]) -> list[tuple[list[str], Any]]:
    """``["a.b=3", "c=[1,2]"]`` -> ``[(["a","b"], 3), (["c"], [1, 2])]``; values parsed as YAML
    (``yaml_source.load_yaml``: ``1e-3`` is a number, a repeated key is refused)."""
    parsed = []
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--set {pair!r}: expected key.sub=value (e.g. --set train.epochs=5)")
        key, raw = pair.split("=", 1)
        parts = [p.strip() for p in key.strip().split(".")]
        if not all(parts):
            raise UserError(f"--set {pair!r}: empty part in key {key!r}")
        try:
            value = load_yaml(raw, f"--set {pair}")[0] if raw.strip() != "" else None
        except UserError as exc:
            if "given twice" in str(exc):
                raise
            value = raw  # not YAML (e.g. an unbalanced bracket): the text as it is
        parsed.append((parts, value))
    return parsed


def apply_overrides(raw: dict[str, Any], overrides: list[tuple[list[str], Any]]) -> dict[str, Any]:
    data = copy.deepcopy(raw)
    for parts, value in overrides:
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise UserError(f"--set {'.'.join(parts)}: {'.'.join(parts[: i + 1])} is not a block")
            node = child
        node[parts[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a recipe file (UserError: missing, not YAML, a key given twice, not a mapping)."""
    return read_yaml_file(path, "recipe", "give the path of a YAML recipe (see recipes/)")[0]


def load_recipe(path: str | Path | None, overrides: list[str] | None = None,
                raw: dict[str, Any] | None = None) -> Recipe:
    """Read, override and fully validate a recipe (common keys, dataset and method options).

    Messages name where each wrong key was written: the ``--set`` that gave it, or the file and line."""
    if raw is None:
        data, source = read_yaml_file(path, "recipe", "give the path of a YAML recipe (see recipes/)")
    else:
        data, source = raw, Source(str(path) if path is not None else "recipe")
    pairs = list(overrides or [])
    parsed = parse_overrides(pairs)
    source = Source(source.name, source.lines, {tuple(parts): pair for (parts, _), pair in zip(parsed, pairs)})
    return validate_recipe(apply_overrides(data, parsed), source)


def validate_recipe(data: dict[str, Any], source: str | Source = "recipe") -> Recipe:
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, source, Recipe, data=data)) from None
    # Second stage: options that depend on the chosen dataset and method.
    from bogc_cli.data.options import validate_dataset_options
    from bogc_cli.fusion import method_label, validate_method_options

    validate_dataset_options(recipe, source)
    validate_method_options(recipe, source)
    label = method_label(recipe)
    problem = path_part_problem(label)
    if problem:
        raise UserError(f"{where(source, 'method')}: the method's name in run paths, {label!r} (method.name with its "
                        f"options), cannot be a folder name: {problem}; choose a plain value (letters, digits, "
                        "'-', '_', '.')")
    return recipe


__all__ = ["Recipe", "Source", "apply_overrides", "check_seeds", "load_recipe", "parse_overrides", "read_yaml",
           "validate_recipe"]
