"""Chunk gradients of linear layers from one forward of the whole batch (BOGC ``moments: microbatch``).

``microbatch`` needs, per source and parameter, the sum over the K chunks of the batch of the
chunk gradient and of its square. Forwarding each chunk and back-propagating each source per
chunk costs K forwards and K x (passes) backward calls: on small models (mfeat's MLPs) that fixed
overhead, not arithmetic, made a step 5.4x joint. For an ``nn.Linear`` the gradient of a sum over
rows is a sum of per-row terms, ``dL/dW = sum_r g_r x_r^T`` (``g_r``: the gradient at the layer's
output for row r, ``x_r`` its input), so the chunk gradients come from the tensors one whole-batch
forward and backward already hold: ``W_k = K * G_k^T X_k`` (one batched matrix product per
layer and pass; K because a chunk's loss is the mean over its B / K rows), ``b_k = K * sum_k G``.
Their mean over chunks is the whole batch's gradient, as with the loop.

It applies when every parameter that needs a variance is the weight or bias of an ``nn.Linear``
called once per forward, and no layer couples the rows of a batch (BatchNorm): then a chunk's
gradient here is exactly the gradient of that chunk's loss forwarded on its own (dropout apart:
one mask draw for the batch instead of one per chunk). Otherwise (convolutions, BatchNorm,
attention, a batch that K does not divide) ``bogc`` keeps the loop. ``benchmarks/step_time.py``
shows the cost of both.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class LinearChunkMoments:
    """Per-chunk gradient sums and squares of the ``nn.Linear`` layers holding ``params`` (see module docstring).

    Use: ``with capture(): forward; for each backward pass: set_pass(name); backward`` then ``squares(k)``."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter]):
        owner = {}
        for module in model.modules():
            if isinstance(module, nn.Linear):
                for p in (module.weight, module.bias):
                    if p is not None:
                        owner[id(p)] = module
        self.owner = {id(p): owner[id(p)] for p in params}
        self.modules = list({id(m): m for m in self.owner.values()}.values())
        self._inputs: dict[int, torch.Tensor] = {}
        self._grads: dict[tuple[int, str], torch.Tensor] = {}
        self._pass = ""
        self.valid = True

    @staticmethod
    def applicable(model: nn.Module, params: list[nn.Parameter]) -> bool:
        """Every parameter in ``params`` belongs to an ``nn.Linear`` and no module of ``model`` couples rows."""
        if any(isinstance(m, _BatchNorm) for m in model.modules()):
            return False
        linear = {id(p) for m in model.modules() if isinstance(m, nn.Linear)
                  for p in (m.weight, m.bias) if p is not None}
        return bool(params) and all(id(p) in linear for p in params)

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Record each layer's input in the forward and the gradient at its output in every backward."""
        self._inputs, self._grads, self.valid = {}, {}, True

        def record(module, args, output):
            key = id(module)
            if key in self._inputs:  # called twice in one forward: the per-row split would be wrong
                self.valid = False
            self._inputs[key] = args[0].detach()

            def keep(grad, key=key):
                self._grads[(key, self._pass)] = grad.detach()
            output.register_hook(keep)

        handles = [m.register_forward_hook(record) for m in self.modules]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def set_pass(self, name: str) -> None:
        """Name the backward pass about to run (the gradients it leaves are filed under it)."""
        self._pass = name

    def squares(self, module: nn.Linear, pass_name: str, k: int, dtype: torch.dtype,
                out: tuple[torch.Tensor, torch.Tensor | None]) -> bool:
        """Sums over the k chunks of the squared chunk gradients of ``module``'s weight and bias in pass
        ``pass_name``, each divided by k^2 (the caller scales once): ``sum_k (G_k^T X_k)^2`` and
        ``sum_k (sum G_k)^2``, written into ``out`` (views shaped ``[out, in]`` and ``[out]``; a None is not
        computed), so that a caller assembling a flat buffer copies nothing. Returns False (``out``
        untouched) where the pass did not reach the layer.

        Rows are split into k contiguous chunks of equal size (as ``tensor_split`` does when k divides them)."""
        g = self._grads.get((id(module), pass_name))
        if g is None:
            return False
        g = g if g.dtype == dtype else g.to(dtype)
        g = g.reshape(k, -1, g.shape[-1])                                              # [k, rows/k (x T), out]
        x = self._inputs[id(module)]
        x = (x if x.dtype == dtype else x.to(dtype)).reshape(k, -1, module.in_features)
        if out[0] is not None:
            torch.sum(torch.bmm(g.transpose(1, 2), x).square_(), dim=0, out=out[0])   # [out, in]
        if out[1] is not None:
            torch.sum(g.sum(dim=1).square_(), dim=0, out=out[1])
        return True
