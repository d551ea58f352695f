"""The MultimodalModel container and its declared gradient sources.

A *gradient source* is one loss: ``"fused"`` (the fusion head's loss L_0) or a modality
name m (that modality's unimodal loss L_m). The model states which sources touch each of
its parameter groups, from its structure alone:

- encoder m -> (fused, m)
- fusion head -> (fused,)            [with ``fusion-slices`` unimodal logits: (fused, every m)]
- unimodal head m -> (m,)
- expert encoder m (only with independent experts, I2M2) -> (fused, m)
- coupling (only when a method couples the encoders, e.g. greedy's MMTM) -> (fused, every m)

Methods read ``param_groups()``; they never match parameter names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.models.encoder_options import EncoderSpec
from bogc_cli.models.encoders import build_encoder
from bogc_cli.models.pretrained.base import PretrainedEncoder
from bogc_cli.models.fusion_heads import ConcatHead, build_fusion_head
from bogc_cli.tasks import TaskSpec

FUSED = "fused"
FILLS = ("zero-input", "zero-feature", "mean-feature")


@dataclass
class Outputs:
    """``fused_logits``: ``[B, C]``; ``unimodal_logits[m]``: ``[B, C]``; ``features[m]``: ``[B, d_m]``."""

    fused_logits: torch.Tensor
    unimodal_logits: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor]


@dataclass(frozen=True)
class ParamGroup:
    """A set of parameters and the gradient sources (losses) that touch them."""

    name: str
    role: str  # "encoder" | "fusion" | "unimodal_head"
    modality: str | None
    sources: tuple[str, ...]
    params: tuple[nn.Parameter, ...]


def product_of_experts(logits: list[torch.Tensor]) -> torch.Tensor:
    """Normalised product of experts: ``log_softmax(sum_k log_softmax(logits_k))``, each ``[B, C]`` -> ``[B, C]``.

    The result is a log-probability vector, so it is its own logits (cross-entropy and argmax apply)."""
    return torch.log_softmax(torch.stack([torch.log_softmax(x.float(), dim=1) for x in logits]).sum(0), dim=1)


class MultimodalModel(nn.Module):
    """One encoder per modality, a fusion head, and one unimodal head per modality.

    ``forward(inputs, present)``: ``inputs[m]`` is ``[B, *shape_m]``; ``present[m]`` (optional)
    is a bool ``[B]`` mask of the samples where modality m is available. Missing samples are
    filled per ``fill``: ``zero-input`` zeroes the input, ``zero-feature`` zeroes the encoder's
    feature, ``mean-feature`` substitutes the running mean of training features.

    ``encoders[m]``: an encoder name or a ``model.encoders.<m>`` block (``EncoderSpec``); ``load_weights``:
    pretrained encoders read their weights files (False: the architecture only, a checkpoint fills it).

    ``num_classes`` is the width of every head: ``C`` logits (classification), ``C`` independent logits
    (multilabel), 1 value (regression; ``tasks.output_dim``). ``task`` (``tasks.TaskSpec``, default
    classification) is the run's task: the methods' losses (``Method.task_loss``) and the evaluation read it.
    """

    def __init__(self, modalities: dict[str, ModalitySpec], num_classes: int, encoders: dict[str, str | EncoderSpec],
                 cfg, fusion: str = "concat", unimodal_logits: str = "heads", fill: str = "zero-feature",
                 load_weights: bool = True, task: TaskSpec | None = None):
        super().__init__()
        self.modalities = list(modalities)
        self.num_classes = num_classes
        self.task = task or TaskSpec()
        self.fill = fill
        # to build more encoders of the same kind (and from the same weights)
        self._encoder_recipe = (dict(encoders), dict(modalities), cfg, load_weights)
        self.encoders = nn.ModuleDict({m: build_encoder(encoders[m], spec, cfg, load_weights, f"model.encoders.{m}")
                                       for m, spec in modalities.items()})
        # independent unimodal experts (I2M2): each unimodal head reads its own encoder; empty otherwise
        self.expert_encoders = nn.ModuleDict()
        dims = [self.encoders[m].out_dim for m in self.modalities]
        self.fusion_head = build_fusion_head(fusion, dims, num_classes, cfg.fusion_hidden)
        self.slice_unimodal = unimodal_logits == "fusion-slices"
        if self.slice_unimodal and not (isinstance(self.fusion_head, ConcatHead) and self.fusion_head.is_linear):
            raise ValueError("fusion-slices unimodal logits need a linear concat fusion head")
        self.unimodal_heads = nn.ModuleDict(
            {} if self.slice_unimodal else {m: nn.Linear(d, num_classes) for m, d in zip(self.modalities, dims)})
        for m, d in zip(self.modalities, dims):
            self.register_buffer(f"feature_mean_{m}", torch.zeros(d))
        self.feature_momentum = 0.1
        # "fusion": the fusion head's logits; "product-of-experts": log softmax of the fusion head plus
        # every unimodal head, renormalised (I2M2). Set by a method's adapt_model, not by the recipe.
        self.prediction = "fusion"
        # a module that runs the encoders jointly, exchanging information between them mid-way (greedy's
        # MMTM): ``coupling(encoders, inputs, masks) -> {m: [B, d_m]}``. Set by a method's adapt_model.
        self.coupling: nn.Module | None = None

    # ------------------------------------------------------------------ structure
    def add_expert_encoders(self) -> None:
        """Give every unimodal head an encoder of its own (freshly initialised, same kind and size as the
        joint model's), so the unimodal experts no longer share the joint model's encoders (I2M2's
        independent experts: about twice the encoder parameters). Their running feature means are buffers
        ``expert_feature_mean_<m>``."""
        if self.slice_unimodal:
            raise ValueError("independent experts need separate unimodal heads, not fusion-slices")
        names, specs, cfg, load_weights = self._encoder_recipe
        for m in self.modalities:
            encoder = build_encoder(names[m], specs[m], cfg, load_weights, f"model.encoders.{m}")
            self.expert_encoders[m] = encoder
            self.register_buffer(f"expert_feature_mean_{m}", torch.zeros(encoder.out_dim))

    def param_groups(self) -> list[ParamGroup]:
        groups = [ParamGroup(f"encoder:{m}", "encoder", m, (FUSED, m), tuple(self.encoders[m].parameters()))
                  for m in self.modalities]
        groups += [ParamGroup(f"expert_encoder:{m}", "expert_encoder", m, (FUSED, m), tuple(e.parameters()))
                   for m, e in self.expert_encoders.items()]
        fusion_sources = (FUSED, *self.modalities) if self.slice_unimodal else (FUSED,)
        if self.coupling is not None:
            groups.append(ParamGroup("coupling", "coupling", None, (FUSED, *self.modalities),
                                     tuple(self.coupling.parameters())))
        groups.append(ParamGroup("fusion_head", "fusion", None, fusion_sources, tuple(self.fusion_head.parameters())))
        head_sources = (lambda m: (FUSED, m)) if self.prediction == "product-of-experts" else (lambda m: (m,))
        groups += [ParamGroup(f"head:{m}", "unimodal_head", m, head_sources(m), tuple(h.parameters()))
                   for m, h in self.unimodal_heads.items()]
        return groups

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters of every pretrained encoder (those read from a weights file or directory,
        experts' included): what ``optim.backbone_lr`` applies to."""
        return [p for module in self.modules() if isinstance(module, PretrainedEncoder)
                for p in module.backbone_parameters()]

    def encoder_sources(self) -> dict[str, dict]:
        """Where each modality's encoder came from (family, file, sha256, frozen parameters), for environment.json;
        a from-scratch encoder: ``{"family": "scratch", "class": ...}``."""
        out = {}
        for m, encoder in self.encoders.items():
            found = [e for e in encoder.modules() if isinstance(e, PretrainedEncoder)]
            out[m] = dict(found[0].source) if found else {"family": "scratch", "class": type(encoder).__name__}
        return out

    def feature_mean(self, m: str, expert: bool = False) -> torch.Tensor:
        return getattr(self, f"expert_feature_mean_{m}" if expert else f"feature_mean_{m}")

    # ------------------------------------------------------------------ forward
    def encode(self, inputs: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None,
               expert: bool = False) -> dict[str, torch.Tensor]:
        """Features ``{m: [B, d_m]}`` with missing samples filled; ``expert``: those of the independent
        experts' own encoders (``expert_encoders``) instead of the joint model's."""
        encoders = self.expert_encoders if expert else self.encoders
        masks = {m: None if present is None else present.get(m) for m in self.modalities}
        xs = {}
        for m in self.modalities:
            x, mask = inputs[m], masks[m]
            if mask is not None and self.fill == "zero-input":
                x = x * mask.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
            xs[m] = x
        if self.coupling is not None and not expert:
            raw = self.coupling(encoders, xs, masks)
        else:
            raw = {m: encoders[m](xs[m]) for m in self.modalities}
        feats = {}
        for m in self.modalities:
            z, mask = raw[m], masks[m]
            if self.training and torch.is_grad_enabled():
                self._track_mean(m, z, mask, expert)
            if mask is not None and self.fill != "zero-input":
                fill = (torch.zeros_like(z) if self.fill == "zero-feature"
                        else self.feature_mean(m, expert).to(z.dtype).expand_as(z))
                z = torch.where(mask.view(-1, 1), z, fill)
            feats[m] = z
        return feats

    @torch.no_grad()
    def _track_mean(self, m: str, z: torch.Tensor, mask: torch.Tensor | None, expert: bool = False) -> None:
        mean = self.feature_mean(m, expert)
        z = z.detach().to(mean.dtype)
        if mask is not None:
            if not bool(mask.any()):
                return
            z = z[mask]
        mean.lerp_(z.mean(0), self.feature_momentum)

    def heads(self, feats: dict[str, torch.Tensor], expert_feats: dict[str, torch.Tensor] | None = None) -> Outputs:
        """Logits from features; ``expert_feats`` (independent experts): the unimodal heads read these."""
        ordered = [feats[m] for m in self.modalities]
        fused = self.fusion_head(ordered)
        if self.slice_unimodal:
            uni = dict(zip(self.modalities, self.fusion_head.slice_logits(ordered)))
        else:
            source = feats if expert_feats is None else expert_feats
            uni = {m: self.unimodal_heads[m](source[m]) for m in self.modalities}
        if self.prediction == "product-of-experts":
            fused = product_of_experts([fused, *uni.values()])
        return Outputs(fused, uni, feats)

    def forward(self, inputs: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None) -> Outputs:
        experts = self.encode(inputs, present, expert=True) if len(self.expert_encoders) else None
        return self.heads(self.encode(inputs, present), experts)
