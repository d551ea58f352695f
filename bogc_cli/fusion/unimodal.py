"""``unimodal``: train on one modality alone; the others are not loaded at all."""

from __future__ import annotations

from pydantic import Field

from bogc_cli.fusion.base import Method
from bogc_cli.models.multimodal import FUSED
from bogc_cli.schema import StrictModel


class UnimodalOptions(StrictModel):
    modality: str = Field(description="the one modality to train on")


class Unimodal(Method):
    name = "unimodal"
    summary = "one modality alone (method.modality); the single-modality reference"
    fidelity = ("AGM_ICCV2023 run/CREMAD_main.py --modality Audio/Visual (one encoder, one linear head); equal with "
                "a linear fusion head over the one feature")
    Options = UnimodalOptions
    tasks = ("classification", "multilabel", "regression")
    task_note = "one head's task loss"

    @classmethod
    def label(cls, options: UnimodalOptions) -> str:
        return f"unimodal-{options.modality}"

    @classmethod
    def used_modalities(cls, options: UnimodalOptions, available: list[str]) -> list[str]:
        return [options.modality]

    @classmethod
    def check_modalities(cls, options: UnimodalOptions, modalities: list[str]) -> str | None:
        if options.modality not in modalities:
            return (f"method.modality {options.modality!r} is not a modality of this run; "
                    f"valid: {', '.join(modalities)}")
        return None

    def losses(self, out, labels):
        return {FUSED: self.fused_loss(out, labels), **self.probe_losses(out, labels)}


METHOD = Unimodal
