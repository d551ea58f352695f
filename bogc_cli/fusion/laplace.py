"""A diagonal Laplace posterior of each loss's last layer, and BOGC's ``moments: laplace``.

Guo et al., arXiv 2505.23071 (v2/v3 "Rethinking Multi-Modal Learning from Gradient Uncertainty",
abstract and third-party summaries; the method section is not public) state that the random
quantity is the parameters of each modality's last layer before the output, that their posterior
is approximated by a Laplace approximation around the learned point, and that Gaussian gradient
distributions follow by Monte Carlo moment matching. Everything below that is more precise than
that is this project's reconstruction (docs/method.md).

The last layer of a gradient source (a loss):

- ``model.unimodal_logits: heads``: modality m's last layer is its unimodal head, an
  ``nn.Linear`` on the encoder's features ``z_m`` (weight ``[C, d_m]``, bias ``[C]``). The
  fusion loss's last layer is the fusion head's ``final_linears()`` (concat: its linear layer, or
  the output layer after ``model.fusion_hidden``; film, gated: ``fc``; sum: one per modality,
  their outputs summed).
- ``model.unimodal_logits: fusion-slices``: modality m's logits are ``z_m W[:, block_m]^T + b / M``,
  slices of the fusion head's single linear layer ``(W, b)``. Modality m's last layer is block m of
  ``W`` and ``b / M``; the fusion loss's is the whole layer. One posterior over ``(W, b)``, whose
  curvature sums every loss that reaches it.

Posterior, per last-layer parameter (diagonal)::

    precision = prior_precision + N * G,   G = bias-corrected EMA (decay beta) over steps of the
                                               batch-mean diagonal GGN of the losses reaching the layer

``N`` is the number of training rows: the training loss is a mean over rows, the Laplace
posterior belongs to the summed loss (laplace-torch's ``n_data`` plays the same part). For
cross-entropy on logits ``z = W a + b``, ``p = softmax(z)``, the GGN with respect to the logits is
``diag(p) - p p^T``, so the diagonal of the GGN of the weights is exact in closed form
(``linear_softmax_diag_ggn``)::

    GGN[W_cj] = sum_i p_ic (1 - p_ic) a_ij^2,   GGN[b_c] = sum_i p_ic (1 - p_ic)   (x 1 / M^2 for b / M)

Why our own 15 lines and not laplace-torch, curvlinops or BackPACK: the layer is linear and the
loss is cross-entropy, where the exact diagonal is the formula above, computed from the forward's
own logits and inputs (two small matrix products, no extra pass). ``benchmarks/laplace_curvature.py``
measures the libraries on the same layer: each needs its own forward and backward of the layer
(laplace-torch's last-layer backends build the per-sample Jacobians ``[B, C, C (d + 1)]``), needs a
model that maps one input tensor to logits (ours maps a dict to several), and brings in several
packages (laplace-torch pins asdfghjkl, and pulls curvlinops, BackPACK, torchmetrics); their
results equal ours (checked in that script and in tests).

Per step (one forward of the batch): the curvature of this batch updates ``G``; K samples
``theta_k = theta + eps_k / sqrt(precision)`` of every last layer are drawn from a generator of
the method's own (checkpointed; the same draws on every process); for the posterior mean (row 0)
and each sample, each source's gradient is computed: on its last layer in closed form
(``(softmax(z_k) - onehot)^T a / B``), below it by one batched backward
(``torch.autograd.grad(..., is_grads_batched=True)``) of the cotangents ``G_k W_k`` at the last
layer's input, with the fusion loss in one set of rows and every modality loss in another (the
modality losses reach disjoint parameters below their last layers). The gradient distribution's
mean is the gradient at the posterior mean (first-order moment matching: ``E[g(theta)] = g(E[theta])``
for every part linear in theta, and it makes equal evidence give exactly ``uniform``'s update); its
variance is the unbiased variance over the K samples (the spread of the gradient itself, not of a
mean of samples).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from bogc_cli.models.multimodal import FUSED, MultimodalModel


def linear_softmax_diag_ggn(a: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact diagonal of the generalised Gauss-Newton matrix of ``sum_i CE(z_i, y_i)`` for ``z = W a + b``.

    ``a``: ``[B, d]`` layer inputs; ``logits``: ``[B, C]``. Returns ``(diag for W [C, d], diag for b [C])``:
    ``sum_i p_ic (1 - p_ic) a_ij^2`` and ``sum_i p_ic (1 - p_ic)``, ``p = softmax(logits)``. It does not depend
    on the labels (for cross-entropy the GGN equals the Fisher information)."""
    p = torch.softmax(logits, dim=-1)
    h = p * (1 - p)                                                                # [B, C]
    return h.T @ (a * a), h.sum(dim=0)


@dataclass
class Term:
    """One affine term of a source's logits: ``a @ W[:, cols]^T + bias_scale * b`` of last layer ``layer``.

    ``input``: where ``a`` comes from: ``("layer", i)`` (what layer i received in the forward) or
    ``("feature", m)`` (the encoder's features, for fusion slices)."""

    layer: int
    input: tuple[str, Any]
    cols: slice
    bias_scale: float


class LastLayerLaplace:
    """Diagonal Laplace posterior of the last layers of a ``MultimodalModel`` and the per-source gradients
    at samples of it (module docstring). State (curvature EMA, step count, generator) is in ``state_dict``."""

    def __init__(self, model: MultimodalModel, samples: int, prior_precision: float, beta: float, seed: int):
        if samples < 2:
            raise ValueError(f"samples must be at least 2 (a variance needs two), not {samples}")
        if prior_precision <= 0 or not 0 < beta < 1:
            raise ValueError("prior_precision must be > 0 and beta in (0, 1)")
        self.model = model
        self.samples = samples
        self.prior_precision = prior_precision
        self.beta = beta
        head = model.fusion_head
        finals = list(head.final_linears())
        self.layers: list[nn.Linear] = finals + [model.unimodal_heads[m] for m in model.unimodal_heads]
        full = slice(None)
        self.terms: dict[str, list[Term]] = {FUSED: [Term(i, ("layer", i), full, 1.0) for i in range(len(finals))]}
        if model.slice_unimodal:
            start, n = 0, len(model.modalities)
            for m, d in zip(model.modalities, head.dims):
                self.terms[m] = [Term(0, ("feature", m), slice(start, start + d), 1.0 / n)]
                start += d
        else:
            for j, m in enumerate(model.unimodal_heads):
                self.terms[m] = [Term(len(finals) + j, ("layer", len(finals) + j), full, 1.0)]
        self.last_params = {id(p) for layer in self.layers for p in (layer.weight, layer.bias)}
        self.below = [p for p in model.parameters() if p.requires_grad and id(p) not in self.last_params]
        self.curvature: list[list[torch.Tensor]] | None = None  # per layer [weight, bias]: the EMA of G
        self.steps = 0
        self.generator = torch.Generator().manual_seed(seed)
        self._inputs: dict[int, torch.Tensor] = {}
        self.draws: list[list[torch.Tensor]] = []

    # ------------------------------------------------------------------ forward capture
    @contextmanager
    def capture(self) -> Iterator[None]:
        """Within this context, the model's forward records what each last layer receives."""
        self._inputs = {}

        def hook(i: int):
            def record(module, args, output):
                self._inputs[i] = args[0]
            return record

        handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(self.layers)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _input(self, term: Term, features: dict[str, torch.Tensor]) -> torch.Tensor:
        kind, key = term.input
        return self._inputs[key] if kind == "layer" else features[key]

    # ------------------------------------------------------------------ posterior
    def posterior_std(self, rows: int) -> list[list[torch.Tensor]]:
        """Per layer ``[std of W, std of b]``: ``(prior_precision + rows * G)^(-1/2)`` (G bias-corrected)."""
        correction = 1 - self.beta ** max(self.steps, 1)
        return [[(self.prior_precision + rows * c / correction).rsqrt() for c in layer] for layer in self.curvature]

    def _batch_curvature(self, a: dict[int, torch.Tensor], logits0: dict[str, torch.Tensor], batch: int,
                         dtype: torch.dtype) -> list[list[torch.Tensor]]:
        """Batch-mean diagonal GGN per layer ``[W, b]``, summed over the losses that reach it."""
        out = [[torch.zeros(layer.weight.shape, dtype=dtype, device=layer.weight.device),
                torch.zeros(layer.bias.shape, dtype=dtype, device=layer.weight.device)] for layer in self.layers]
        for s, terms in self.terms.items():
            for j, t in enumerate(terms):
                gw, gb = linear_softmax_diag_ggn(a[(s, j)], logits0[s])
                out[t.layer][0][:, t.cols] += gw / batch
                out[t.layer][1] += gb * (t.bias_scale ** 2) / batch
        return out

    def _update_curvature(self, batch_curvature: list[list[torch.Tensor]]) -> None:
        if self.curvature is None:
            self.curvature = [[torch.zeros_like(c) for c in layer] for layer in batch_curvature]
        for state, new in zip(self.curvature, batch_curvature):
            for c, g in zip(state, new):
                c.mul_(self.beta).add_(g, alpha=1 - self.beta)
        self.steps += 1

    def _draw(self, std: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
        """Per layer ``[W_k, b_k]`` ``[K + 1, ...]``: row 0 the posterior mean, rows 1..K samples."""
        out = []
        for layer, (s_w, s_b) in zip(self.layers, std):
            rows = []
            for p, s in ((layer.weight, s_w), (layer.bias, s_b)):
                mean = p.detach().to(s.dtype)
                eps = torch.randn((self.samples, *p.shape), generator=self.generator, dtype=torch.float64)
                rows.append(torch.cat([mean.unsqueeze(0), mean + eps.to(device=s.device, dtype=s.dtype) * s]))
            out.append(rows)
        return out

    # ------------------------------------------------------------------ gradients
    def gradient_rows(self, features: dict[str, torch.Tensor], labels: torch.Tensor, params: dict[str, list],
                      dtype: torch.dtype, rows: int, sync=None) -> dict[str, torch.Tensor]:
        """Each source's flat gradient at the posterior mean and at K samples: ``{source: [K + 1, n_s]}``.

        Call after a forward under ``capture()``. ``features``: that forward's encoder features (with their
        graph); ``labels`` ``[B]``; ``params[s]``: the parameters source s touches, in its flat order
        (``GradientSources.params``); ``dtype``: of the statistics; ``rows``: N, the training rows.
        ``sync`` (data-parallel): a function that sums a list of tensors over processes, each process's
        weighted by its share of the global batch; it is called twice (curvature, then gradients)."""
        batch = labels.shape[0]
        a = {(s, j): self._input(t, features) for s, terms in self.terms.items() for j, t in enumerate(terms)}
        a_val = {k: v.detach().to(dtype) for k, v in a.items()}
        onehot = F.one_hot(labels, self.layers[0].weight.shape[0]).to(dtype)

        def logits_of(s: str, weights) -> torch.Tensor:                             # [K + 1, B, C]
            total = 0
            for j, t in enumerate(self.terms[s]):
                w, b = weights[t.layer]
                total = total + torch.einsum("bd,kcd->kbc", a_val[(s, j)], w[:, :, t.cols]) \
                    + t.bias_scale * b.unsqueeze(1)
            return total

        means = [[layer.weight.detach().to(dtype).unsqueeze(0), layer.bias.detach().to(dtype).unsqueeze(0)]
                 for layer in self.layers]
        logits0 = {s: logits_of(s, means)[0] for s in self.terms}
        curvature = self._batch_curvature(a_val, logits0, batch, dtype)
        if sync is not None:  # the global batch's curvature: every process draws from the same posterior
            flat = sync([c for layer in curvature for c in layer])
            curvature = [flat[2 * i:2 * i + 2] for i in range(len(self.layers))]
        self._update_curvature(curvature)
        weights = self._draw(self.posterior_std(rows))
        self.draws = weights  # the last step's [W_k, b_k] per layer (row 0: the mean), for inspection

        grads_last: dict[str, dict[int, torch.Tensor]] = {}
        cotangents: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        k1 = self.samples + 1
        for s, terms in self.terms.items():
            g = (torch.softmax(logits_of(s, weights), dim=-1) - onehot) / batch       # [K + 1, B, C]
            out = grads_last.setdefault(s, {})
            rows_of = slice(0, k1) if s == FUSED else slice(k1, 2 * k1)
            for j, t in enumerate(terms):
                w, b = weights[t.layer]
                layer = self.layers[t.layer]
                gw = out.setdefault(id(layer.weight), torch.zeros_like(w))
                gw[:, :, t.cols] += torch.einsum("kbc,bd->kcd", g, a_val[(s, j)])
                gb = out.setdefault(id(layer.bias), torch.zeros_like(b))
                gb += t.bias_scale * g.sum(dim=1)
                x = a[(s, j)]
                if x.requires_grad:
                    cot = cotangents.get(id(x), (x, torch.zeros((2 * k1, *x.shape), dtype=dtype, device=x.device)))
                    cot[1][rows_of] += torch.einsum("kbc,kcd->kbd", g, w[:, :, t.cols])
                    cotangents[id(x)] = cot
        below = self._backward(list(cotangents.values()))

        flats = {}
        for s, plist in params.items():
            rows_of = slice(0, k1) if s == FUSED else slice(k1, 2 * k1)
            parts = []
            for p in plist:
                if id(p) in self.last_params:
                    g = grads_last[s].get(id(p))
                    g = g if g is not None else torch.zeros((k1, *p.shape), dtype=dtype, device=p.device)
                else:
                    g = below.get(id(p))
                    g = g[rows_of] if g is not None else torch.zeros((k1, *p.shape), dtype=dtype, device=p.device)
                parts.append(g.reshape(k1, -1).to(dtype))
            flats[s] = torch.cat(parts, dim=1)
        if sync is not None:
            order = list(flats)
            flats = dict(zip(order, sync([flats[s] for s in order])))
        return flats

    def _backward(self, cotangents: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[int, torch.Tensor]:
        """One batched backward of stacked cotangents ``[R, *x.shape]`` at the last layers' inputs: ``{id(p): [R, ...]}``."""
        if not cotangents or not self.below:
            return {}
        outputs = [x for x, _ in cotangents]
        grads = torch.autograd.grad(outputs, self.below, grad_outputs=[c.to(x.dtype) for x, c in cotangents],
                                    is_grads_batched=True, allow_unused=True)
        return {id(p): g for p, g in zip(self.below, grads) if g is not None}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"curvature": self.curvature, "steps": self.steps, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curvature = state["curvature"]
        self.steps = state["steps"]
        self.generator.set_state(state["generator"])
