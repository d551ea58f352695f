"""The built-in ``synthetic`` dataset: seeded, instant, imbalanced on purpose.

Each modality has one smooth random pattern per class (unit RMS). A sample of class ``y``
shows, in modality m, the pattern of ``y`` with probability ``informative[m]`` and the
pattern of a uniformly drawn class otherwise, scaled by ``snr[m]`` and buried in unit
Gaussian noise. So each modality alone is right on about ``informative + (1 - informative) / C``
of the samples (less when ``snr`` is low), modalities err on different samples, and fusing
them beats the best one: the situation multimodal balancing methods are about.

The data depend only on ``data_seed``, not on the training seed, like a real dataset.

``imbalance`` sets how much stronger one modality's signal is than another's: with
``{ratio: R, strong: a, weak: b, snr: g}`` the two SNRs become
``snr[a] = g * sqrt(2) * R / sqrt(1 + R^2)`` and ``snr[b] = g * sqrt(2) / sqrt(1 + R^2)``, so
``snr[a] / snr[b] = R`` (amplitude ratio; ``20 log10 R`` dB) while ``snr[a]^2 + snr[b]^2 = 2 g^2``
stays fixed. Why that sum: with ``informative = 1`` and equal shapes, a sample's class is read from
two independent Gaussian observations, and the Bayes-optimal fused classifier sees their squared
SNRs add (the squared distances between class means add, in noise units). Fixing the sum keeps the
best achievable fused accuracy the same at every ``R``: the ratio moves information from one
modality to the other without adding any, so what changes along the sweep is the imbalance alone
(``R = 1``: both at ``g``). The other fields of the two modalities (``informative``, ``shape``,
``kind``) are untouched: keep them equal, as ``recipes/synthetic-imbalance`` does. An ``snr`` given in
``specs`` for either modality must agree with the one ``imbalance`` implies.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from bogc_cli.data.cache import Manifest, ModalitySpec, SplitArrays, class_counts
from bogc_cli.schema import FeatureKind, Seed, StrictModel


class SyntheticModality(StrictModel):
    kind: FeatureKind
    shape: list[int] = Field(min_length=1, description="per-sample shape, e.g. [1, 32, 32] for audio")
    informative: float = Field(ge=0, le=1, description="probability the sample shows its own class pattern")
    snr: float = Field(1.0, gt=0, description="pattern amplitude over noise std")


def _default_modalities() -> dict[str, SyntheticModality]:
    return {
        "audio": SyntheticModality(kind="audio", shape=[1, 32, 32], informative=0.85, snr=0.5),
        "image": SyntheticModality(kind="image", shape=[1, 16, 16], informative=0.6, snr=0.5),
        "vector": SyntheticModality(kind="vector", shape=[32], informative=0.45, snr=0.5),
    }


class SyntheticImbalance(StrictModel):
    ratio: float = Field(ge=1, description="snr[strong] / snr[weak] (amplitude SNRs); 1 = balanced")
    strong: str = Field("audio", description="modality that gets the higher SNR")
    weak: str = Field("image", description="modality that gets the lower SNR")
    snr: float = Field(0.5, gt=0, description="g: root mean square of the two SNRs, fixed as the ratio changes")

    def snrs(self) -> dict[str, float]:
        """``{strong: g sqrt(2) R / sqrt(1 + R^2), weak: g sqrt(2) / sqrt(1 + R^2)}`` (module doc)."""
        scale = self.snr * math.sqrt(2.0 / (1.0 + self.ratio ** 2))
        return {self.strong: scale * self.ratio, self.weak: scale}


class SyntheticOptions(StrictModel):
    num_classes: int = Field(10, ge=2)
    n_train: int = Field(3000, gt=0)
    n_val: int = Field(600, gt=0)
    n_test: int = Field(1000, gt=0)
    data_seed: Seed = 0
    specs: dict[str, SyntheticModality] = Field(default_factory=_default_modalities,
                                                description="modality name -> kind, shape, informative, snr; "
                                                "merged over the defaults (audio, image, vector)")
    imbalance: SyntheticImbalance | None = Field(None, description="{ratio, strong, weak, snr}: two "
                                                 "modalities' SNRs in that ratio, their root mean square snr")

    @model_validator(mode="before")
    @classmethod
    def _merge_specs(cls, data):
        """``specs.audio.snr: 2`` changes one field of the default audio modality, keeping the rest;
        a new name adds a modality. Choose a subset with ``dataset.modalities``. Then ``imbalance``
        sets the SNRs of its two modalities."""
        if not isinstance(data, dict):
            return data
        given = data.get("specs")
        if isinstance(given, dict) or data.get("imbalance") is not None:
            merged = {m: s.model_dump() for m, s in _default_modalities().items()}
            for m, spec in (given if isinstance(given, dict) else {}).items():
                merged[m] = {**merged.get(m, {}), **spec} if isinstance(spec, dict) else spec
            data = {**data, "specs": _apply_imbalance(data.get("imbalance"), merged,
                                                      given if isinstance(given, dict) else {})}
        return data

    @field_validator("imbalance")
    @classmethod
    def _names_two_modalities(cls, imbalance: SyntheticImbalance | None, info: ValidationInfo):
        if imbalance is None:
            return imbalance
        if imbalance.strong == imbalance.weak:
            raise ValueError(f"strong and weak are both {imbalance.strong!r}: name two modalities")
        specs = info.data.get("specs")  # absent when specs itself was refused
        for m in (imbalance.strong, imbalance.weak):
            if specs is not None and m not in specs:
                raise ValueError(f"names modality {m!r}, which is not in specs ({', '.join(specs)})")
        return imbalance


def _apply_imbalance(raw, merged: dict, given: dict) -> dict:
    """``merged`` specs with the SNRs that ``imbalance`` (raw recipe value) implies; ValueError on a conflict.

    A malformed ``imbalance`` (or one naming modalities it cannot) is left for field validation to report,
    so the message points at ``dataset.imbalance``.
    """
    if raw is None:
        return merged
    try:
        imbalance = SyntheticImbalance.model_validate(raw)
    except ValidationError:
        return merged
    if imbalance.strong == imbalance.weak or not all(isinstance(merged.get(m), dict) for m in imbalance.snrs()):
        return merged
    for m, snr in imbalance.snrs().items():
        mine = given.get(m, {}).get("snr") if isinstance(given.get(m), dict) else None
        if isinstance(mine, (int, float)) and not math.isclose(mine, snr, rel_tol=1e-9):
            raise ValueError(f"specs.{m}.snr is {mine} but imbalance (ratio {imbalance.ratio}, snr "
                             f"{imbalance.snr}) makes it {snr:.6g}: give the SNR in one of the two places")
        merged[m] = {**merged[m], "snr": snr}
    return merged


def _smooth_patterns(rng: np.random.Generator, n: int, shape: list[int], kind: str) -> np.ndarray:
    """``n`` class patterns of ``shape``, spatially smooth for 2-D kinds, unit RMS each."""
    if kind in ("audio", "image") and len(shape) == 3:
        c, h, w = shape
        coarse = torch.from_numpy(rng.standard_normal((n, c, max(h // 4, 1), max(w // 4, 1))).astype(np.float32))
        pats = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).numpy()
    else:
        pats = rng.standard_normal((n, *shape)).astype(np.float32)
    rms = np.sqrt((pats.reshape(n, -1) ** 2).mean(axis=1))
    return pats / rms.reshape(n, *([1] * len(shape)))


def generate(options: SyntheticOptions) -> tuple[Manifest, dict[str, SplitArrays]]:
    """Make the three splits. Returns the manifest and ``{split: SplitArrays}`` (float32 inputs)."""
    rng = np.random.default_rng(options.data_seed)
    c = options.num_classes
    patterns = {m: _smooth_patterns(rng, c, s.shape, s.kind) for m, s in options.specs.items()}
    splits = {}
    for split, n in (("train", options.n_train), ("val", options.n_val), ("test", options.n_test)):
        labels = rng.integers(0, c, size=n)
        inputs = {}
        for m, spec in options.specs.items():
            shown = np.where(rng.random(n) < spec.informative, labels, rng.integers(0, c, size=n))
            noise = rng.standard_normal((n, *spec.shape)).astype(np.float32)
            inputs[m] = (spec.snr * patterns[m][shown] + noise).astype(np.float32)
        splits[split] = SplitArrays(inputs, labels.astype(np.int64))
    classes = [str(i) for i in range(c)]
    manifest = Manifest(
        dataset="synthetic",
        classes=classes,
        modalities={m: ModalitySpec(s.kind, list(s.shape), "float32") for m, s in options.specs.items()},
        splits={s: len(a) for s, a in splits.items()},
        class_counts={s: class_counts(a.labels, classes) for s, a in splits.items()},
        params=options.model_dump(mode="json"),
    )
    return manifest, splits
