"""BOGC's calibrated update: gradient moments -> evidence -> opinions -> fused weights -> update.

Everything works on flat buffers: ``mu`` and ``var`` are ``[S, N]`` for the S sources that
touch a block of parameters, N = the block's elements, and ``Segments`` says which parameter
tensor each element belongs to. No Python loop over dimensions or tensors; with the
``sign`` frame, one loop over the (few) sources. Every rule is per tensor (or per dimension), so
several blocks with the same number of sources can be calibrated in one call on their
concatenated buffers (row i = each block's i-th source); the result is the same as block by block.

Evidence (``evidence_of``), dimensionless and non-negative:

- ``relative``: precision over the tensor's mean precision (sources and dimensions together).
- ``snr``: ``mu^2 / (var + eps * v)``, ``v`` the tensor's mean variance over all its sources.
- ``precision``: the same precision-times-squared-mean, ``mu_s^2 * tau_s`` with
  ``tau_s = 1 / (var_s + eps * v_s)``, but ``v_s`` is source s's own mean variance over the tensor,
  so one source's evidence is a function of its own gradient moments alone (what ``frame:
  modality`` needs: one opinion per modality from that modality's precision). ``mu^2 tau`` is a
  squared signal-to-noise ratio, so it has no unit: scaling one source's gradients by c > 0 leaves
  its evidence unchanged.

Frames (how evidence becomes opinions and weights):

- ``dims``: the D dimensions of one tensor are the frame (as in Trusted Multi-view
  Classification); the fused belief is attributed back to the sources (``evidence.attribution``).
- ``sign``: per dimension the frame {+, -}; a source commits its evidence to the sign of its mean.
- ``modality``: per dimension the frame is the set of the K sources that reach the dimension (the
  fusion loss and each modality's loss). Source s holds a Dirichlet opinion with evidence only on
  its own singleton: ``b_s = e_s / (e_s + K)``, ``u_s = K / (e_s + K)``. Fusing the K opinions
  with the reduced Dempster rule gives the unnormalised belief ``b_s prod_{t != s} u_t`` on s,
  ``prod_t u_t`` uncommitted, i.e. after dividing through by ``prod_t u_t``: belief in s
  proportional to ``e_s / K``, fused uncertainty ``u = K / (sum_t e_t + K)``. The weight of source s
  is K times its pignistic probability (belief plus an equal share of the uncommitted mass):
  ``w_s = K (e_s + 1) / (sum_t e_t + K)``, the Dirichlet mean of the fused evidence. Weights sum to
  K per dimension; equal evidence gives ``w = 1`` (the plain sum), no evidence anywhere too, and a
  source with no evidence keeps only its share of the fused uncertainty, ``w = u``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bogc_cli.fusion.evidence import _gauss_legendre, attribution

EVIDENCE = ("relative", "snr", "precision")
FRAMES = ("dims", "sign", "modality")


@dataclass
class Segments:
    """Element -> tensor map of a flat buffer whose tensors lie one after another: ``ids`` ``[N]`` (int64),
    ``sizes`` ``[T]`` (elements per tensor, in the buffer's dtype), ``lengths`` ``[T]`` (the same, int64)."""

    ids: torch.Tensor
    sizes: torch.Tensor
    lengths: torch.Tensor

    def __post_init__(self):
        self.element_sizes = self.sizes.index_select(0, self.ids)                   # [N]: its tensor's size

    @classmethod
    def single(cls, n: int, like: torch.Tensor) -> "Segments":
        return cls.from_numels([n], like)

    @classmethod
    def from_numels(cls, numels: list[int], like: torch.Tensor) -> "Segments":
        lengths = torch.tensor(numels, dtype=torch.long, device=like.device)
        ids = torch.repeat_interleave(torch.arange(len(numels), device=like.device), lengths)
        return cls(ids, lengths.to(like.dtype), lengths)

    @property
    def count(self) -> int:
        return int(self.sizes.shape[0])

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., N]`` -> per-tensor sums ``[..., T]``.

        A segmented reduction over contiguous runs: ``index_add_`` would do the same with atomic adds
        into T addresses, which serialise on a GPU (it made a ResNet-18 BOGC step 10x slower)."""
        if x.dim() == 1:
            return torch.segment_reduce(x, "sum", lengths=self.lengths)
        rows = x.reshape(-1, x.shape[-1])
        out = torch.segment_reduce(rows, "sum", lengths=self.lengths.expand(rows.shape[0], -1), axis=1)
        return out.reshape(*x.shape[:-1], self.count)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.sum(x) / self.sizes

    def expand(self, v: torch.Tensor) -> torch.Tensor:
        """``[..., T]`` -> ``[..., N]``."""
        return v.index_select(-1, self.ids)


@dataclass
class Calibration:
    """``update`` ``[N]``; ``weights`` ``[S, N]`` (before clipping); ``applied`` ``[S, N]``: the weights the update
    used, ``weights`` clipped to ``[0, w_max]`` (what diagnostics report); ``uncertainty`` ``[T]`` fused u per tensor;
    ``clipped`` ``[S, N]`` bool (weight above w_max)."""

    update: torch.Tensor
    weights: torch.Tensor
    applied: torch.Tensor
    uncertainty: torch.Tensor
    clipped: torch.Tensor


def evidence_of(mu: torch.Tensor, var: torch.Tensor, seg: Segments, kind: str = "relative", scale: float = 1.0,
                eps: float = 1e-8) -> torch.Tensor:
    """Dimensionless, non-negative evidence ``[S, N]`` from gradient means and variances ``[S, N]``.

    Precision is measured relative to the tensor's mean variance (``eps`` is relative too), so
    multiplying every gradient by c > 0 leaves the evidence unchanged (with ``precision``, scaling
    one source's gradients leaves its evidence unchanged). An infinite variance gives zero evidence;
    a tensor whose variances are all zero gives every source equal evidence. ``ValueError`` for an
    unknown ``kind``.
    """
    # posinf must be given: nan_to_num's default turns +inf into the dtype's max, which then overflows the mean
    var = torch.nan_to_num(var.clamp_min(0), nan=float("inf"), posinf=float("inf"))    # in [0, inf], no NaN
    # Masks are avoided on [S, N] buffers: on the CPU torch.where, masked_fill and isfinite cost 15-40x a
    # multiply (not vectorised), which made them most of a small model's step. Each replacement below is exact.
    finite = torch.nan_to_num(var, posinf=0.0)                                      # var where finite, else 0
    ref = seg.mean(finite.mean(dim=0))                                              # [T]
    known = ref > 0                                                                 # some variance in the tensor
    ref = ref.where(known, 1)
    if kind == "precision":  # each source against its own variance level; the tensor's where it has none
        own = seg.mean(finite)                                                      # [S, T]
        ref = own.where(own > 0, ref)
    ref = seg.expand(ref)                                                           # [N] or [S, N]
    noise = var + eps * ref
    if kind == "relative":
        tau = ref / noise                                                           # dimensionless precision
        mean_tau = seg.mean(tau.mean(dim=0))                                        # over sources and dims
        return scale * tau / seg.expand(mean_tau).clamp_min(torch.finfo(tau.dtype).tiny)
    if kind in ("snr", "precision"):
        snr = torch.nan_to_num(mu.square() / noise, posinf=torch.finfo(mu.dtype).max / 4)
        # no variance anywhere in the tensor: no scale to measure it against, so equal evidence (as relative):
        # 1 where the variance is finite, 0 where it is infinite. snr is finite and k is 0 or 1, so
        # snr * k + [var finite] * (1 - k) selects exactly; var * 0 is NaN exactly where var is infinite.
        k = seg.expand(known.to(snr.dtype))                                         # [N]
        e = snr * k + torch.nan_to_num(var * 0 + (1 - k), nan=0.0)
        return e if scale == 1.0 else scale * e
    raise ValueError(f"evidence must be one of {EVIDENCE}, not {kind!r}")


def _dims_attribution(e: torch.Tensor, seg: Segments) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame = a tensor's dimensions. Returns r ``[S, N]`` and fused uncertainty ``[T]``."""
    strength = seg.expand(seg.sum(e) + seg.sizes)                                  # [S, N]
    b = e / strength
    u = seg.element_sizes / strength
    r = attribution(b, u)
    # Fused uncertainty prod(u) / (belief + prod(u)), with belief = sum_dims(prod(b + u) - prod(u)), divided
    # through by prod(u): (b + u) / u = 1 + e / K, so no product of small masses can underflow to 0 / 0.
    ratio = e / seg.element_sizes + 1                                              # [S, N]
    excess = seg.sum(ratio.prod(dim=0) - 1)                                        # [T], may be inf
    return r, 1 / (1 + excess)


def _sign_attribution(mu: torch.Tensor, e: torch.Tensor, seg: Segments) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame = {+, -} per dimension; each source commits its evidence to the sign of its mean."""
    b = e / (e + 2)
    u = 2 / (e + 2)
    sign = mu >= 0
    x, w = _gauss_legendre(b.shape[0], b)
    r = torch.empty_like(b)
    for s in range(b.shape[0]):  # sources are few; dimensions stay vectorised
        agree = b * (sign == sign[s])
        terms = x.view(-1, 1, 1) * agree.unsqueeze(0) + u.unsqueeze(0)             # [Q, S, N]
        others = terms.prod(dim=1) / terms[:, s]                                    # [Q, N]
        r[s] = b[s] * (w.view(-1, 1) * others).sum(dim=0)
    # fused uncertainty prod(u) / (pos + neg + prod(u)), divided through by prod(u) as in the dims frame:
    # (b + u) / u = 1 + e / 2 on the committed side, 1 on the other, so no product of masses underflows to 0 / 0
    half = e / 2 + 1
    pos = torch.where(sign, half, 1).prod(dim=0) - 1
    neg = torch.where(sign, 1, half).prod(dim=0) - 1
    return r, seg.mean(1 / (1 + pos + neg))


def _modality_weights(e: torch.Tensor, seg: Segments) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame = the K sources of each dimension (module docstring). Returns weights ``[S, N]`` (summing to K over
    sources) and the mean fused uncertainty per tensor ``[T]``.

    Computed relative to each dimension's largest evidence (at least 1), so that evidence near the
    dtype's maximum cannot overflow the sum."""
    k = e.shape[0]
    top = e.amax(dim=0).clamp_min(1)                                               # [N]
    alpha = (e + 1) / top                                                          # Dirichlet alpha / top
    strength = alpha.sum(dim=0)                                                    # (sum e + K) / top
    return k * alpha / strength, seg.mean(k / top / strength)


def calibrate_segments(mu: torch.Tensor, var: torch.Tensor, seg: Segments, evidence: str = "relative",
                       frame: str = "dims", evidence_scale: float = 1.0, w_max: float = 10.0,
                       norm: str = "none") -> Calibration:
    """Calibrated update of a block: ``mu``, ``var`` ``[S, N]`` -> ``Calibration`` (update ``[N]``).

    ``ValueError`` for an unknown ``evidence``, ``frame`` or ``norm``."""
    n_src = mu.shape[0]
    e = evidence_of(mu, var, seg, evidence, evidence_scale)
    if frame == "modality":
        weights, uncertainty = _modality_weights(e, seg)
        return _finish(mu, weights, uncertainty, seg, w_max, norm)
    if frame == "dims":
        r, uncertainty = _dims_attribution(e, seg)
    elif frame == "sign":
        r, uncertainty = _sign_attribution(mu, e, seg)
    else:
        raise ValueError(f"frame must be one of {FRAMES}, not {frame!r}")
    total = seg.sum(r.sum(dim=0))                                                  # [T]
    some = total > 0                                                               # evidence somewhere in the tensor
    inf, one = torch.full_like(total, float("inf")), torch.ones_like(total)
    denominator, low, high = seg.expand(torch.stack([total.clamp_min(torch.finfo(r.dtype).tiny).where(some, one),
                                                     (-inf).where(some, one), inf.where(some, one)])).unbind()
    # no evidence anywhere in a tensor: weight 1 (the plain sum), by a clamp to [1, 1] (torch.where on [S, N] is
    # slow on the CPU, see evidence_of). A tensor with evidence has no NaN share (its total would be NaN), so the
    # nan_to_num changes only tensors that the clamp then sets to 1, and their shares can no longer make NaN.
    shares = torch.nan_to_num(r, nan=0.0, posinf=float("inf"), neginf=float("-inf"))
    weights = (n_src * seg.element_sizes * shares / denominator).clamp(low, high)   # [S, N]
    return _finish(mu, weights, uncertainty, seg, w_max, norm)


def _finish(mu: torch.Tensor, weights: torch.Tensor, uncertainty: torch.Tensor, seg: Segments, w_max: float,
            norm: str) -> Calibration:
    """Clip the weights to ``[0, w_max]``, apply them to ``mu`` and (``norm: match``) rescale per tensor."""
    clipped = weights > w_max
    applied = weights.clamp(0, w_max)
    update = (applied * mu).sum(dim=0)
    if norm == "match":
        plain = mu.sum(dim=0)
        ratio = (seg.sum(plain.square()) / seg.sum(update.square()).clamp_min(torch.finfo(mu.dtype).tiny)).sqrt()
        update = update * seg.expand(torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio)))
    elif norm != "none":
        raise ValueError(f"norm must be 'none' or 'match', not {norm!r}")
    return Calibration(update, weights, applied, uncertainty, clipped)


def calibrate(mu: torch.Tensor, var: torch.Tensor, evidence: str = "relative", frame: str = "dims",
              evidence_scale: float = 1.0, w_max: float = 10.0) -> torch.Tensor:
    """Calibrated update of one parameter tensor: ``mu``, ``var`` ``[S, D]`` (S sources) -> ``[D]``."""
    seg = Segments.single(mu.shape[-1], mu)
    return calibrate_segments(mu, var, seg, evidence, frame, evidence_scale, w_max).update
