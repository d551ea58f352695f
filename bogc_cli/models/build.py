"""Build the MultimodalModel a recipe describes, for the modalities a run uses."""

from __future__ import annotations

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.errors import UserError
from bogc_cli.models.encoders import DEFAULT_ENCODER, ENCODERS
from bogc_cli.models.multimodal import MultimodalModel
from bogc_cli.recipe import ModelBlock


def resolve_encoders(cfg: ModelBlock, modalities: dict[str, ModalitySpec], all_modalities: list[str] | None = None
                     ) -> dict[str, str]:
    """Encoder name per modality: model.encoders (dict or one name), else the default for the kind."""
    chosen = cfg.encoders
    known = set(all_modalities or modalities)
    if isinstance(chosen, str):
        names = {m: chosen for m in modalities}
    else:
        chosen = chosen or {}
        unknown = [m for m in chosen if m not in known]
        if unknown:
            raise UserError(f"model.encoders names modalities {unknown} that the data lacks; "
                            f"modalities: {', '.join(sorted(known))}")
        names = {m: chosen.get(m, DEFAULT_ENCODER[spec.kind]) for m, spec in modalities.items()}
    for m, name in names.items():
        if name not in ENCODERS:
            raise UserError(f"model.encoders: {name!r} (for {m}) is not an encoder; valid: {', '.join(ENCODERS)}")
    return names


def build_model(cfg: ModelBlock, modalities: dict[str, ModalitySpec], num_classes: int,
                all_modalities: list[str] | None = None) -> MultimodalModel:
    encoders = resolve_encoders(cfg, modalities, all_modalities)
    if cfg.fusion == "film" and len(modalities) < 2:
        raise UserError("model.fusion 'film' needs at least two modalities; use concat for one")
    if cfg.unimodal_logits == "fusion-slices" and not cfg.linear_concat_head:
        raise UserError("model.unimodal_logits 'fusion-slices' needs model.fusion 'concat' with "
                        "model.fusion_hidden 0; use 'heads' otherwise")
    return MultimodalModel(modalities, num_classes, encoders, cfg, fusion=cfg.fusion,
                           unimodal_logits=cfg.unimodal_logits, fill=cfg.fill)
