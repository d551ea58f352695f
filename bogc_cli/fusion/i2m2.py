"""``i2m2``: inter- and intra-modality modelling as a normalised product of experts.

Madaan et al., "Jointly Modeling Inter- & Intra-Modality Dependencies for Multi-modal
Learning", NeurIPS 2024. The prediction is the product of one expert per modality (the
unimodal heads, intra-modality dependencies) and the joint expert (the fusion head,
inter-modality dependencies), renormalised:

    log p(y | x) = log_softmax( log_softmax f_12 + sum_m log_softmax f_m )

and the whole model is trained end to end with cross-entropy on that product. It applies to
any number of modalities unchanged. ``adapt_model`` switches the model's prediction rule, so
``bogc eval`` and ``missing-modality`` predict with the same product. The unimodal experts need
their own heads (``model.unimodal_logits: heads``): slices of the fusion head would not be
independent experts.

Hyper-parameters: none. (The paper's optional warm start of each expert from separately
trained unimodal and multimodal models is not part of this rule.)
"""

from __future__ import annotations

from bogc_cli.fusion.base import Method
from bogc_cli.models.multimodal import FUSED


class I2M2(Method):
    name = "i2m2"
    summary = "product of experts: log_softmax(fusion) + sum_m log_softmax(head_m), renormalised, trained end to end"
    min_modalities = 2
    modality_note = "the product takes one expert per modality for any M"

    @classmethod
    def check_config(cls, options, recipe) -> str | None:
        if recipe.model.unimodal_logits != "heads":
            return ("method i2m2 needs one expert head per modality: set model.unimodal_logits: heads "
                    f"(it is {recipe.model.unimodal_logits!r})")
        return None

    @classmethod
    def adapt_model(cls, options, model) -> None:
        model.prediction = "product-of-experts"

    def losses(self, out, labels):
        # out.fused_logits is already the normalised product (log-probabilities)
        return {FUSED: self.fused_loss(out, labels)}


METHOD = I2M2
