"""The local graph of a query and its candidates: distances, k-reciprocal distance, tightness.

Used by :mod:`fastimg.rerank` (DBA, k-reciprocal, ``auto``), which re-exports the public
functions (``k_reciprocal_distance``, ``local_tightness``).  Everything here works on a
small (M, M) matrix of dissimilarities among the query and its top candidates, on a
squared-Euclidean-like scale (``Metric.pairwise``: ``1 - s`` for pearson and cosine,
``1 - BC`` for the histogram metrics, ``d^2`` for l2, the distance itself for l1,
chisqr, ...); no database search.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import numpy.typing as npt

from fastimg.errors import ArgumentError

__all__ = ["k_reciprocal_distance", "local_tightness"]


def _unit_embedding(m: Any, x: np.ndarray) -> np.ndarray:
    """Rows whose dot products are the [-1, 1] similarity used for weights
    (``Metric.sim_space``; histogram metrics: the Bhattacharyya coefficient)."""
    from fastimg.metrics import embed

    return embed(m.sim_space, x)


# ---------------------------------------------------------------------------
# k-reciprocal (Zhong et al. 2017) on a small distance matrix
# ---------------------------------------------------------------------------

def k_reciprocal_distance(dist: npt.ArrayLike, k1: int = 20, k2: int = 6, lam: float = 0.3,
                          n_probe: int = 1) -> np.ndarray:
    r"""Zhong et al.'s re-ranked distance, vectorised, over a small distance matrix.

    Follows the authors' reference implementation: each row is normalised by its
    maximum; :math:`R(p, k_1)` = k-reciprocal neighbours (``j`` in the top
    ``k1 + 1`` of ``p`` and ``p`` in the top ``k1 + 1`` of ``j``); each member's
    :math:`R(j, \mathrm{round}(k_1/2))` is added when it shares more than 2/3 of its
    elements with :math:`R(p, k_1)`; :math:`V_p` holds ``exp(-d)`` on that set,
    normalised to sum 1; local query expansion replaces :math:`V_p` by the mean of
    :math:`V` over the top ``k2`` of ``p``; then

    .. math:: d_J(p, g) = 1 - \frac{\sum_l \min(V_{pl}, V_{gl})}{\sum_l \max(V_{pl}, V_{gl})},
              \qquad d^* = (1 - \lambda) d_J + \lambda d.

    Parameters
    ----------
    dist : array_like, shape (M, M)
        Non-negative distances among probes and gallery (probes first); row ``i``
        ranks the others for node ``i`` (need not be symmetric).
    k1, k2 : int
    lam : float in [0, 1]
    n_probe : int, default 1
        Number of leading rows that are probes.

    Returns
    -------
    ndarray of float64, shape (n_probe, M - n_probe)
        Final distance of each probe to each gallery node.
    """
    d = np.asarray(dist, dtype=np.float64)
    m = d.shape[0]
    if d.ndim != 2 or d.shape[1] != m:
        raise ArgumentError(f"dist must be a square matrix; got shape {d.shape}")
    rowmax = d.max(axis=1, keepdims=True)
    d = np.divide(d, rowmax, out=np.zeros_like(d), where=rowmax > 0)
    rank = np.argsort(d, axis=1, kind="stable")
    rows = np.arange(m)[:, None]
    r1 = _reciprocal(rank, k1)
    r2 = _reciprocal(rank, int(np.around(k1 / 2.0)))
    r1f, r2f = r1.astype(np.float64), r2.astype(np.float64)
    shared = r1f @ r2f.T  # shared[p, j] = |R(p, k1) & R(j, k1/2)|
    take = r1 & (shared > (2.0 / 3.0) * r2.sum(axis=1)[None, :])
    expanded = r1 | ((take.astype(np.float64) @ r2f) > 0)
    v = np.where(expanded, np.exp(-d), 0.0)
    v /= v.sum(axis=1, keepdims=True)
    if k2 != 1:
        nn = np.zeros((m, m))
        nn[rows, rank[:, :k2]] = 1.0
        v = (nn @ v) / nn.sum(axis=1, keepdims=True)
    vp = v[:n_probe]
    inter = np.minimum(vp[:, None, :], v[None, n_probe:, :]).sum(axis=2)
    jaccard = 1.0 - inter / (2.0 - inter)
    return (1.0 - lam) * jaccard + lam * d[:n_probe, n_probe:]


def _reciprocal(rank: np.ndarray, k: int) -> np.ndarray:
    """(M, M) bool: ``j`` in the top ``k + 1`` of ``i`` (itself included) and ``i`` in
    the top ``k + 1`` of ``j``, from each row's ranking ``rank`` (M, M)."""
    m = rank.shape[0]
    top = np.zeros((m, m), dtype=bool)
    top[np.arange(m)[:, None], rank[:, :min(k + 1, m)]] = True
    return top & top.T


_PAIRWISE: Any = None


def _pairwise_kernel() -> Any:
    """Numba kernel (compiled on first use): all-pairs L1 distance, or for
    ``intersect=True`` the intersection distance ``sum(z_i) - sum(min(z_i, z_j))``."""
    global _PAIRWISE
    if _PAIRWISE is None:
        from numba import njit

        @njit(cache=True, fastmath=True, nogil=True)
        def pairwise(z, intersect):  # pragma: no cover - compiled
            m, d = z.shape
            out = np.zeros((m, m))
            tot = np.zeros(m)
            for i in range(m):
                acc = 0.0
                for t in range(d):
                    acc += z[i, t]
                tot[i] = acc
            for i in range(m):
                for j in range(i + 1, m):
                    acc = 0.0
                    if intersect:
                        for t in range(d):
                            acc += min(z[i, t], z[j, t])
                        out[i, j] = max(tot[i] - acc, 0.0)
                        out[j, i] = max(tot[j] - acc, 0.0)
                    else:
                        for t in range(d):
                            acc += abs(z[i, t] - z[j, t])
                        out[i, j] = acc
                        out[j, i] = acc
            return out

        _PAIRWISE = pairwise
    return _PAIRWISE


def _pairwise_distance(m: Any, z: np.ndarray) -> np.ndarray:
    """(M, M) non-negative dissimilarities of the metric among rows of z (row = first
    argument), on a squared-Euclidean-like scale (``Metric.pairwise``): 1 - s
    (pearson, cosine), d^2 (bhattacharyya, l2), self-similarity - s (intersect),
    the value itself (others)."""
    if m.pairwise == "gram":
        e = _unit_embedding(m, z)
        g = e @ e.T
        return np.maximum(1.0 - g, 0.0)  # pearson/cosine: 1 - s ; bhattacharyya: d^2 = 1 - BC
    if m.pairwise == "sqeuclidean":
        sq = np.einsum("ij,ij->i", z, z)
        return np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)
    if m.pairwise in ("l1", "intersect"):
        return _pairwise_kernel()(np.ascontiguousarray(z, dtype=np.float64), m.pairwise == "intersect")
    from fastimg.metrics import exact_scores
    out = np.empty((z.shape[0], z.shape[0]))
    for i in range(z.shape[0]):
        out[i] = np.maximum(exact_scores(m, z[i], z), 0.0)  # chisqr, chisqr_alt, kl_div: distances
    return out


def _distances_from(m: Any, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Row 0 of :func:`_pairwise_distance` of ``[q; rows]`` without the others: the
    dissimilarity of each row to ``q`` (``q`` the first argument), shape (n,)."""
    q = np.asarray(q, dtype=np.float64)
    r = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    if m.pairwise == "gram":
        e = _unit_embedding(m, np.vstack([q[None, :], r]))
        return np.maximum(1.0 - e[1:] @ e[0], 0.0)
    if m.pairwise == "sqeuclidean":
        return np.einsum("ij,ij->i", r - q, r - q)
    if m.pairwise == "l1":
        return np.abs(r - q).sum(axis=1)
    if m.pairwise == "intersect":
        return np.maximum(q.sum() - np.minimum(r, q).sum(axis=1), 0.0)
    from fastimg.metrics import exact_scores
    return np.maximum(exact_scores(m, q, r), 0.0)


# ---------------------------------------------------------------------------
# tightness: small tight groups or large ones (auto)
# ---------------------------------------------------------------------------

def _node_tightness(dist: np.ndarray) -> np.ndarray:
    """Tightness of every node of a local graph, from its distances to the others
    (row ``i`` of ``dist``, the diagonal ignored); NaN where undefined."""
    d = np.array(dist, dtype=np.float64)
    np.fill_diagonal(d, np.inf)
    d.sort(axis=1)
    d = d[:, :-1]
    others = d.shape[1]
    lo, hi = min(_TIGHT_RANKS[2], others // 4), min(_TIGHT_RANKS[3], others)
    with np.errstate(divide="ignore", invalid="ignore"):
        near = np.log(d[:, _TIGHT_RANKS[1] - 1] / d[:, _TIGHT_RANKS[0] - 1])
        far = np.log(d[:, hi - 1] / d[:, lo - 1])
        return near / far


_TIGHT_RANKS = (1, 4, 20, 80)


def local_tightness(dist: npt.ArrayLike) -> Optional[float]:
    r"""Tightness of a local graph: are its groups small and tight, or large?

    For each node, with :math:`d_{(r)}` its distance to its ``r``-th nearest other
    node (``dist``'s row, the metric's pairwise scale)

    .. math:: t = \frac{\log(d_{(4)} / d_{(1)})}{\log(d_{(80)} / d_{(20)})},

    how fast distances grow over the first few neighbours compared with further out
    (ranks 20 and 80 become ``L // 4`` and ``L`` when a node has fewer than 80 others).
    A member of a small group of near-duplicates or views (2-4 images) sees a jump
    after its group, then a flat profile: ``t`` well above 1.  A member of a large
    class sees distances grow smoothly: ``t`` below 1.  The result is the median over
    the nodes (NaN ones - equal distances - left out).

    Parameters
    ----------
    dist : array_like, shape (M, M)
        Dissimilarities among the nodes (the query and its candidates), M >= 9.

    Returns
    -------
    float or None
        None when no node has a defined value.
    """
    d = np.asarray(dist, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1] or d.shape[0] < 9:
        raise ArgumentError(f"dist must be a square matrix of at least 9 nodes; got shape {d.shape}")
    t = _node_tightness(d)
    t = t[~np.isnan(t)]
    return float(np.median(t)) if t.size else None
