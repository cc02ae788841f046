"""Sinkhorn-Knopp's equal partition, the one solver for SwAV's codes, SDR's clusters and SeLa's labels.

Given a log-kernel L (N samples x K clusters), it finds the plan Q = diag(a) exp(L) diag(b) whose
rows each hold 1/N of the mass and whose columns each hold 1/K, by scaling the columns and then
the rows, alternately (docs/algorithms.md#the-other-local-methods for SwAV,
docs/algorithms.md#data-clusters for SDR, docs/algorithms.md#sela for SeLa). Everything runs in the
log domain, so exp(L) never under- or overflows however sharp the kernel (SeLa's lambda x
log-probabilities, SwAV's scores / epsilon), in float32 at least (half precisions are widened).

- `sinkhorn(scores, epsilon, iterations)`: SwAV's and SDR's codes, L = scores / epsilon, a fixed
  number of iterations (SwAV's 3), each row of the result sums to 1 (a distribution per sample).
- `sela_labels(logits, sk_lambda, iterations, tol)`: SeLa's pseudo-labels, L = lambda x
  log softmax(logits) in float64, iterated until the columns are within `tol` of 1/K; the hard
  labels are each row's argmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from protocol.clustering import ClusteringError


@dataclass(frozen=True)
class Plan:
    plan: torch.Tensor  # (N, K) transport plan, total mass 1: rows 1/N, columns ~1/K
    iterations: int  # column-then-row scalings run
    error: float  # max relative deviation of the column sums from 1/K before the last row scaling (nan: not measured)


def equal_partition(log_kernel: torch.Tensor, iterations: int, tol: float | None = None) -> Plan:
    """Sinkhorn-Knopp on `log_kernel` (N, K): columns scaled to 1/K, then rows to 1/N, `iterations`
    times, or fewer once the columns deviate by less than `tol` (relative) when `tol` is given."""
    n, k = log_kernel.shape
    u = torch.zeros(n, dtype=log_kernel.dtype, device=log_kernel.device)
    v, it, error = None, 0, math.nan
    while True:
        col = torch.logsumexp(log_kernel + u[:, None], dim=0)  # log column sums / exp(v)
        if tol is not None and v is not None:
            error = float((torch.exp(col + v + math.log(k)) - 1).abs().max())
            if error < tol:
                break
        if it == iterations:
            break
        v = -math.log(k) - col  # columns -> 1/K
        u = -math.log(n) - torch.logsumexp(log_kernel + v[None, :], dim=1)  # rows -> 1/N (exact after each step)
        it += 1
    return Plan(torch.exp(log_kernel + u[:, None] + v[None, :]), it, error)


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Equal-partition codes of `scores` (B, K) (SwAV, SDR): each row sums to 1, each column to about
    B/K; in the scores' dtype."""
    wide = scores.float() if scores.element_size() < 4 else scores
    return (equal_partition(wide / epsilon, iterations).plan * len(scores)).to(scores.dtype)


@dataclass(frozen=True)
class SelaResult:
    labels: np.ndarray  # (N,) int64: argmax of each row of the plan (SeLa's hard pseudo-labels)
    plan: np.ndarray  # (N, K) float64 transport plan Q, total mass 1: rows -> 1/N, columns -> 1/K
    iterations: int  # Sinkhorn-Knopp iterations run
    error: float  # max relative deviation of the column marginals from 1/K at the end


def sela_labels(logits, sk_lambda: float = 25.0, iterations: int = 100, tol: float = 1e-3) -> SelaResult:
    """SeLa's pseudo-labels (Asano et al., ICLR 2020; docs/algorithms.md#sela): the equal-partition
    problem Q = diag(alpha) P^lambda diag(beta) with P = softmax(logits) (N, K), solved in float64
    until the columns deviate by < tol (relative). `logits`: a tensor or an array."""
    z = torch.as_tensor(np.asarray(logits.detach().cpu() if torch.is_tensor(logits) else logits, np.float64))
    if z.ndim != 2:
        raise ClusteringError(f"logits must be (N, K), got shape {tuple(z.shape)}")
    n, k = z.shape
    if k < 2 or k > n:
        raise ClusteringError(f"number of clusters k={k} must be at least 2 and at most the number of points ({n})")
    if sk_lambda <= 0 or iterations < 1:
        raise ClusteringError(f"sk_lambda={sk_lambda} must be > 0 and iterations={iterations} >= 1")
    solved = equal_partition(sk_lambda * torch.log_softmax(z, dim=1), iterations, tol)
    plan = solved.plan.numpy()
    return SelaResult(plan.argmax(1).astype(np.int64), plan, solved.iterations, solved.error)
