"""Subjective-logic opinions and the reduced Dempster-Shafer rule, vectorised.

Frame ``dims``: the D dimensions of one parameter tensor are the frame of discernment (as in
Trusted Multi-view Classification). A source with evidence ``e`` ``[..., D]`` (non-negative)
holds the opinion ``alpha = e + 1``, ``S = sum_d alpha_d``, ``b_d = e_d / S``, ``u = D / S``,
so ``sum_d b_d + u = 1``.

Reduced Dempster rule for two opinions A, B (conflict ``C = sum_{i != j} b^A_i b^B_j``)::

    b_d = (b^A_d b^B_d + b^A_d u^B + b^B_d u^A) / (1 - C),   u = u^A u^B / (1 - C)

It is commutative and associative; for S sources at once the unnormalised belief is
``prod_s (b_{s,d} + u_s) - prod_s u_s`` and the unnormalised uncertainty ``prod_s u_s``.

``attribution`` splits the fused belief of each dimension among the sources. Every term of
the expanded product in which a set T of sources commits to d is shared equally by T's
members, so ``r_{s,d} = b_{s,d} * integral_0^1 prod_{t != s} (x b_{t,d} + u_t) dx``. For two
sources this is exactly ``r^A_d = b^A_d (b^B_d / 2 + u^B)``; for more it is the symmetric
extension (pairwise folding would depend on the order). The integrand is a polynomial of
degree S - 1 in x, so Gauss-Legendre quadrature with ceil(S / 2) nodes is exact.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def opinion(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Evidence ``e`` ``[..., D]`` -> belief ``b`` ``[..., D]`` and uncertainty ``u`` ``[...]``."""
    d = e.shape[-1]
    strength = e.sum(dim=-1) + d
    return e / strength.unsqueeze(-1), d / strength


def combine(b_a: torch.Tensor, u_a: torch.Tensor, b_b: torch.Tensor, u_b: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduced Dempster rule of two opinions (``b``: ``[..., D]``, ``u``: ``[...]``) -> fused ``(b, u)``."""
    ua, ub = u_a.unsqueeze(-1), u_b.unsqueeze(-1)
    numerator = b_a * b_b + b_a * ub + b_b * ua
    conflict = (1 - u_a) * (1 - u_b) - (b_a * b_b).sum(dim=-1)
    norm = 1 - conflict
    return numerator / norm.unsqueeze(-1), u_a * u_b / norm


def combine_all(b: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fuse S opinions at once: ``b`` ``[S, ..., D]``, ``u`` ``[S, ...]`` -> ``([..., D], [...])``."""
    uu = u.unsqueeze(-1)
    prod_u = u.prod(dim=0)
    belief = (b + uu).prod(dim=0) - prod_u.unsqueeze(-1)
    norm = belief.sum(dim=-1) + prod_u
    return belief / norm.unsqueeze(-1), prod_u / norm


_NODES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _gauss_legendre(n_sources: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights on [0, 1], exact for polynomials of degree n_sources - 1 (cached per dtype and device)."""
    key = (n_sources, like.dtype, like.device)
    if key not in _NODES:
        nodes, weights = np.polynomial.legendre.leggauss(max(1, math.ceil(n_sources / 2)))
        x = torch.as_tensor((nodes + 1) / 2, dtype=like.dtype, device=like.device)
        w = torch.as_tensor(weights / 2, dtype=like.dtype, device=like.device)
        _NODES[key] = (x, w)
    return _NODES[key]


def attribution(b: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Each source's share ``r`` ``[S, ..., D]`` of the unnormalised fused belief.

    ``b``: ``[S, ..., D]``; ``u``: broadcastable to ``b`` (``[S, ..., 1]`` for the ``dims``
    frame, ``[S, ..., D]`` when each dimension is its own frame). ``sum_s r_{s,d}`` equals the
    unnormalised fused belief ``prod_s (b_{s,d} + u_s) - prod_s u_s``.
    """
    if b.shape[0] == 2:  # the common case (fusion loss + one modality loss), in closed form
        return torch.stack([b[0] * (b[1] / 2 + u[1]), b[1] * (b[0] / 2 + u[0])])
    x, w = _gauss_legendre(b.shape[0], b)
    shape = (-1,) + (1,) * b.dim()
    terms = x.view(shape) * b.unsqueeze(0) + u.unsqueeze(0)          # [Q, S, ..., D], all > 0 when u > 0
    prod_all = terms.prod(dim=1, keepdim=True)                         # [Q, 1, ..., D]
    others = prod_all / terms                                          # prod over t != s
    return b * (w.view(shape) * others).sum(dim=0)
