"""The nearest code of each vector, whatever else is in the batch.

A float32 product's last bits depend on how many rows it is given (MKL takes other kernels for a few
rows than for many: 1-11 rows of a 64 x 128 distance product differ from the same rows inside 5,000),
and a last-bit difference flips a near-tie: when files were batched, 21 of asterisk-en's 558 files came
out with other codes than alone. So the float32 distances decide only where they can: a vector whose
best and next codes lie closer together than float32's worst-case error could blur is decided again
from its distances in float64. Every vector then gets its exact nearest code (the first on exact ties),
which depends on the vector alone, so files can be encoded together and keep the codes they get alone.
"""
from __future__ import annotations

import torch

RECHECK_ROWS = 512  # float64 rows re-decided per pass (512 x 128 codes x 64 dims: 32 MB)


def _error_bound(dim: int) -> float:
    """A float32 distance ||e||^2 - 2 x.e over `dim` values is within this many times (||x|| + ||e||)^2
    of its exact value, whatever order a BLAS sums it in: `dim` unit roundoffs (2^-24) for the norm
    and the dot product (||e||^2 + 2 |x.e| <= (||x|| + ||e||)^2) and one for the final add, with a
    factor 2 to spare."""
    return 2 * (dim + 1) * 2.0**-24


def nearest_codes(x: torch.Tensor, book: torch.Tensor, norms: torch.Tensor | None = None,
                  exact: bool = True) -> torch.Tensor:
    """x [N, D] or [G, N, D], book [K, D] or [G, K, D] (norms: ||e||^2 [K] or [G, K], if known) ->
    the index of each vector's nearest code by squared Euclidean distance [N] or [G, N].
    exact=False: float32's choice (training, k-means, a long file alone), the same only for the
    same rows."""
    if norms is None:
        norms = book.pow(2).sum(-1)
    if x.dim() == 2:
        dist = torch.addmm(norms, x, book.T, alpha=-2)  # ||e||^2 - 2 x.e: ||x||^2 is the same for every code
    else:
        dist = torch.baddbmm(norms[:, None, :], x, book.transpose(1, 2), alpha=-2.0)
    best = dist.min(-1)  # min().indices: ~2x argmin's speed on a CPU
    if not exact:
        return best.indices
    bound = _error_bound(x.shape[-1])
    x_norm = torch.linalg.vector_norm(x, dim=-1)  # [.., N]
    # A code is a contender if its distance, less its error bound, reaches the best's plus the best's
    # bound. First with the largest code's bound for every code (one compare), then code by code on
    # the few rows that leaves.
    widest = bound * (x_norm + norms.max(-1, keepdim=True).values.sqrt()).square()
    unsure = (dist <= (best.values + 2 * widest).unsqueeze(-1)).sum(-1) > 1
    if not bool(unsure.any()):
        return best.indices
    where = unsure.nonzero(as_tuple=True)  # (rows,) or (groups, rows)
    code_norm = norms.sqrt()
    code_norm = code_norm[None].expand(where[0].numel(), -1) if code_norm.dim() == 1 else code_norm[where[0]]
    each = bound * (x_norm[where][:, None] + code_norm).square()  # [n, K]
    d, chosen = dist[where], best.indices[where]
    reach = d.gather(1, chosen[:, None]) + each.gather(1, chosen[:, None])
    still = (d - each <= reach).sum(-1) > 1
    if not bool(still.any()):
        return best.indices
    idx = best.indices.clone()
    where = tuple(w[still] for w in where)
    for start in range(0, where[0].numel(), RECHECK_ROWS):
        part = tuple(w[start:start + RECHECK_ROWS] for w in where)
        books = book[None] if book.dim() == 2 else book[part[0]]  # [1 or n, K, D]
        # float64 has no MPS kernels: the few unsure rows are decided on the CPU
        rows = x[part].cpu().double()
        exact = ((rows[:, None, :] - books.cpu().double()) ** 2).sum(-1)  # [n, K]
        idx[part] = exact.argmin(-1).to(idx.device)
    return idx
