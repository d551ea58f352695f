"""Build the MultimodalModel a recipe describes, for the modalities a run uses."""

from __future__ import annotations

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.errors import UserError
from bogc_cli.models.encoder_options import EncoderSpec, as_spec
from bogc_cli.models.encoders import DEFAULT_ENCODER
from bogc_cli.models.multimodal import MultimodalModel
from bogc_cli.recipe import ModelBlock
from bogc_cli.tasks import TaskSpec, output_dim


def resolve_encoders(cfg: ModelBlock, modalities: dict[str, ModalitySpec], all_modalities: list[str] | None = None
                     ) -> dict[str, EncoderSpec]:
    """Encoder per modality: model.encoders (dict or one name), else the default for the kind. Names are
    checked when the encoders are built (``build_encoder``)."""
    chosen = cfg.encoders
    known = set(all_modalities or modalities)
    if isinstance(chosen, str):
        return {m: as_spec(chosen) for m in modalities}
    chosen = chosen or {}
    unknown = [m for m in chosen if m not in known]
    if unknown:
        raise UserError(f"model.encoders names modalities {unknown} that the data lacks; "
                        f"modalities: {', '.join(sorted(known))}")
    return {m: as_spec(chosen.get(m, DEFAULT_ENCODER[spec.kind])) for m, spec in modalities.items()}


def build_model(cfg: ModelBlock, modalities: dict[str, ModalitySpec], num_classes: int,
                all_modalities: list[str] | None = None, load_weights: bool = True,
                task: TaskSpec | None = None) -> MultimodalModel:
    """``load_weights``: read pretrained encoders' weights from their files (False when a checkpoint will fill
    the model, e.g. ``bogc eval``: only a Hugging Face model's config.json is read then). ``num_classes``: the
    data's classes (labels, for multilabel); every head gets ``tasks.output_dim`` outputs for ``task``."""
    task = task or TaskSpec()
    encoders = resolve_encoders(cfg, modalities, all_modalities)
    if cfg.fusion == "film" and len(modalities) < 2:
        raise UserError("model.fusion 'film' needs at least two modalities; use concat for one")
    if cfg.unimodal_logits == "fusion-slices" and not cfg.linear_concat_head:
        raise UserError("model.unimodal_logits 'fusion-slices' needs model.fusion 'concat' with "
                        "model.fusion_hidden 0; use 'heads' otherwise")
    return MultimodalModel(modalities, output_dim(task.task, num_classes), encoders, cfg, fusion=cfg.fusion,
                           unimodal_logits=cfg.unimodal_logits, fill=cfg.fill, load_weights=load_weights, task=task)
