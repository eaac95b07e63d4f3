"""Re-ranking of a query's top candidates: query expansion, DBA, k-reciprocal, auto.

Every method works on the query's *top candidates* (from the exact or the
approximate search), never on the full N x N similarity matrix, so a millisecond
query stays a millisecond-scale query (costs in ``bench/bench_rerank.py``).

=================  ==========================================================  =========================
spec name          method                                                      extra work per query
=================  ==========================================================  =========================
``qe``, ``aqe``    average query expansion (Chum et al., ICCV 2007): mean of   1 search
                   the query and its top ``n`` (those passing the gap test),
                   searched again
``alpha-qe``       alpha-weighted QE (Radenovic et al., TPAMI 2018): weights   1 search
                   ``sim^alpha``
``dba``            database-side augmentation of the top ``depth``             ``O(depth^2 D)`` local
                   candidates (each replaced by the ``sim^alpha``-weighted     distances
                   mean of itself and its ``n`` nearest among the query and
                   the other candidates), then re-scored against the query
``k-reciprocal``   k-reciprocal encoding (Zhong et al., CVPR 2017): Jaccard    ``O(depth^2 D)`` local
                   distance of k-reciprocal sets with local query expansion,   distances
                   ``(1 - lambda) Jaccard + lambda original``
``auto``           k-reciprocal with neighbourhood sizes read from the data    as k-reciprocal
                   (below), or no re-ranking where it cannot help
=================  ==========================================================  =========================

A spec is a name or ``"name:param=value,..."`` (e.g. ``"k-reciprocal:k1=20,lambda=0.3"``),
parsed by :func:`parse_spec`; :data:`PARAMS` lists every parameter and default.

The local graph.  DBA, k-reciprocal and auto work on the distances among the
query and its top ``depth`` candidates (:mod:`fastimg.localgraph`: the distances, the
k-reciprocal distance and the tightness; ``Metric.pairwise``, a squared-Euclidean-like
scale: ``1 - s`` for pearson and cosine, ``1 - BC`` for the histogram metrics, ``d^2``
for l2, the distance itself for l1, chisqr, ...).  A candidate's neighbours are
sought in that graph only (searching the database for every candidate would cost
``depth`` queries - 2 s per query at N = 10^6); :func:`augment_database` is the
exact, database-wide DBA, an offline transform of the matrix.

The gap test (``gap``, ``ref``: qe, alpha-qe, dba).  A neighbour is averaged in only
when its distance is below ``gap`` times the distance of the ``ref``-th candidate
(for DBA, of the candidate's own ``ref``-th neighbour in the local graph); ``gap=0``
turns the test off.  In a collection of small groups (a few photos of each scene)
only the group's members are that much closer than the 20th neighbour: QE pulls in
the one near-duplicate of a group of two instead of four strangers, and a query with
no such neighbour is not expanded at all (its plain ranking is returned).

The QE defaults, as rules.  ``qe``: the plain mean of the query and those of its top 2
results whose distance is below 0.6 times the 20th result's (``n=2, gap=0.6, ref=20``);
none passing, the plain ranking.  ``alpha-qe``: the top 2 below 0.7 times the 20th
(``n=2, gap=0.7``), each weighted ``sim^10`` against the query's weight 1 (``alpha=10``):
a near copy (``sim`` >= 0.97: weight >= 0.74) counts almost as in a plain mean, a
neighbour that is merely similar (``sim`` 0.8: weight 0.11) barely moves the query, so a
wrong top match costs little.  Both were picked by the worst case over the suite below, on a lower confidence
bound rather than on the mean (``bench/rerank_suite.py``): an expansion moves a query's
whole ranking, and the first picks by the mean (``qe:n=1,gap=0.8``,
``alpha-qe:n=2,alpha=3,gap=0.8``) lost 0.012 and 0.008 on held-out near-duplicate groups.
Stricter than the Corel-tuned ``n=5, gap=0``, they gain much less on large classes.

``auto``.  Which neighbourhood sizes help depends on the size of the groups: k1 = 30,
k2 = 6 lifts a collection of 100-image classes by 0.05-0.07 mAP and costs 0.03-0.10 on
groups of 2-4 near-duplicates, where k1 = 3, k2 = 2 gains 0.03 (and nothing on the
classes).  ``auto`` reads the
group size from the data, without labels:

1. The *tightness* of the query's local graph (:func:`local_tightness`): for each node
   ``log(d4 / d1) / log(d80 / d20)`` with ``d_r`` its distance to its ``r``-th nearest
   other node - how much faster distances grow over the first few neighbours than
   further out - and the median over the nodes.  Small tight groups: a jump after the
   group, then a flat profile, values well above 1.  Large classes: smooth growth,
   below 1.  ``"auto:tightness=T"`` gives the value instead, e.g. the collection's own
   (:func:`collection_tightness`, the same statistic over sampled rows, computed once;
   steadier than one query's).
2. Tightness above ``threshold`` (0.75): :data:`AUTO_SMALL` (k-reciprocal k1=3, k2=2,
   lambda=0.5); otherwise :data:`AUTO_LARGE` (k1=30, k2=3, lambda=0.5); ``depth`` 200.
3. No re-ranking - the initial ids and scores are returned - when it cannot help:
   fewer than :data:`AUTO_MIN_CANDIDATES` candidates, all distances equal (no
   tightness), or a query with no k1-reciprocal neighbour among its candidates (nobody
   has it among their close neighbours: there is no structure to use).

Defaults were chosen by the worst case over ``bench/rerank_suite.py`` - Corel-1k (99
relevant images per query), UKBench-56 (3) and generated near-duplicate groups of 2-4
among distractors (1-3), three descriptors each - tuned on one half of each
collection's queries and reported on the other (``bench/quality.md``): each method's
default maximises the worst mAP change over the nine collection x descriptor runs (for
``qe`` and ``alpha-qe``, the worst lower 95 % confidence bound of the change).
On the held-out halves ``auto`` never lowers mAP and gains 0.035-0.053 on Corel-1k and
0.018-0.032 on the near-duplicate groups; every default stays above -0.005 everywhere
(worst: ``k-reciprocal`` -0.004, ``alpha-qe`` -0.003, ``qe`` -0.003, on UKBench-56
correlogram, whose half has 28 queries); ``qe`` and ``alpha-qe`` gain little
(Corel-1k +0.001-0.004 and +0.002-0.008): the price of never expanding with a doubtful
neighbour.
Candidates past ``depth`` keep their initial order, so a larger ``depth`` lifts mAP
over long rankings further at a higher cost.

Averaging happens in the metric's natural space (:func:`expansion_space`,
``Metric.mean_space``): pearson averages centred unit vectors, cosine unit
vectors, the histogram metrics (bhattacharyya, chisqr, intersect, ...)
L1-normalised histograms - the mean stays a non-negative histogram, rescaled to
the query's mass - and l2/l1 the raw vectors.  Similarities used as weights
(``sim^alpha``) are in [0, 1]: the dot product in the metric's unit space
(``Metric.sim_space``: pearson, the correlation; histogram metrics, the
Bhattacharyya coefficient of the L1-normalised histograms; l2/l1, the cosine),
negative values clipped to 0.  Both spaces are :func:`fastimg.metrics.embed`'s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Tuple

import numpy as np
import numpy.typing as npt

from fastimg.errors import ArgumentError, ArgumentTypeError
from fastimg.localgraph import (_distances_from, _pairwise_distance, _reciprocal, _unit_embedding,
                                 k_reciprocal_distance, local_tightness)

__all__ = [
    "RerankSpec",
    "PARAMS",
    "rerank_names",
    "parse_spec",
    "apply",
    "candidates_needed",
    "expansion_space",
    "similarity",
    "expand",
    "augment_database",
    "k_reciprocal_distance",
    "local_tightness",
    "collection_tightness",
    "AUTO_SMALL",
    "AUTO_LARGE",
    "AUTO_MIN_CANDIDATES",
]

GetVectors = Callable[[np.ndarray], np.ndarray]
SearchFn = Callable[[np.ndarray, int], Tuple[np.ndarray, np.ndarray]]

# name -> {param: (type, default, lower bound, inclusive, doc)}; a default of None
# means "not set" (the parameter is optional).  Defaults: chosen by the worst case
# over bench/rerank_suite.py (see the module docstring and bench/quality.md).
_GAP_DOC = ("use a neighbour only when its distance is below gap x the distance of the ref-th candidate "
            "(0 = no test: always the top n)")
_REF_DOC = "rank of the reference candidate of the gap test"
PARAMS: dict[str, dict[str, tuple]] = {
    "qe": {
        "n": (int, 2, 1, True, "top results averaged with the query (at most)"),
        "gap": (float, 0.6, 0.0, True, _GAP_DOC),
        "ref": (int, 20, 2, True, _REF_DOC),
    },
    "alpha-qe": {
        "n": (int, 2, 1, True, "top results averaged with the query (at most)"),
        "alpha": (float, 10.0, 0.0, True, "weight exponent: weight = sim^alpha (0 = plain average)"),
        "gap": (float, 0.7, 0.0, True, _GAP_DOC),
        "ref": (int, 20, 2, True, _REF_DOC),
    },
    "dba": {
        "n": (int, 1, 1, True, "neighbours averaged into each candidate (at most)"),
        "alpha": (float, 3.0, 0.0, True, "weight exponent: weight = sim^alpha (0 = plain average)"),
        "depth": (int, 200, 1, True, "candidates augmented (from each other) and re-scored"),
        "gap": (float, 0.0, 0.0, True, _GAP_DOC + "; a candidate's reference is its own ref-th neighbour"),
        "ref": (int, 20, 2, True, _REF_DOC),
    },
    "k-reciprocal": {
        "k1": (int, 3, 1, True, "size of the k-reciprocal neighbourhoods"),
        "k2": (int, 2, 1, True, "neighbours of the local query expansion (1 = none)"),
        "lambda": (float, 0.5, 0.0, True, "weight of the original distance, in [0, 1]"),
        "depth": (int, 200, 2, True, "candidates re-ranked (the local graph has depth + 1 nodes)"),
    },
    "auto": {
        "threshold": (float, 0.75, 0.0, True, "tightness above which the small-group parameters are used"),
        "tightness": (float, None, 0.0, True, "the collection's tightness (collection_tightness); "
                                              "default: estimated per query from its candidates"),
        "depth": (int, 200, 10, True, "candidates re-ranked (and used to estimate the tightness)"),
    },
}
_UPPER = {("k-reciprocal", "lambda"): 1.0, ("qe", "gap"): 1.0, ("alpha-qe", "gap"): 1.0, ("dba", "gap"): 1.0}
_ALIASES = {
    "qe": "qe", "aqe": "qe", "average-qe": "qe",
    "alpha-qe": "alpha-qe", "alphaqe": "alpha-qe", "aqe-alpha": "alpha-qe", "alpha_qe": "alpha-qe",
    "dba": "dba",
    "k-reciprocal": "k-reciprocal", "kreciprocal": "k-reciprocal", "k_reciprocal": "k-reciprocal",
    "krr": "k-reciprocal",
    "auto": "auto",
}
#: k-reciprocal parameters of ``auto`` for collections of small groups (tightness
#: above the threshold) and of large ones (at or below it).
AUTO_SMALL: dict[str, Any] = {"k1": 3, "k2": 2, "lambda": 0.5}
AUTO_LARGE: dict[str, Any] = {"k1": 30, "k2": 3, "lambda": 0.5}
#: ``auto`` leaves a query's ranking alone with fewer candidates than this.
AUTO_MIN_CANDIDATES = 10


def rerank_names() -> list[str]:
    """Canonical re-ranking names (aliases: ``aqe`` = ``qe``, ``krr`` = ``k-reciprocal``);
    ``auto`` picks k-reciprocal's parameters (or none) from the data."""
    return list(PARAMS)


@dataclass(frozen=True)
class RerankSpec:
    """A parsed re-ranking specification.

    Attributes
    ----------
    name : str
        Canonical name, one of :func:`rerank_names`.
    params : dict
        Every parameter of the method, defaults filled in.
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        defaults = {p: d[1] for p, d in PARAMS[self.name].items()}
        changed = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in self.params.items() if v != defaults[k] and v is not None]
        return self.name + (":" + ",".join(changed) if changed else "")


def parse_spec(spec: "str | RerankSpec") -> RerankSpec:
    """Parse ``"name"`` or ``"name:param=value,..."`` into a :class:`RerankSpec`.

    Parameters
    ----------
    spec : str or RerankSpec
        E.g. ``"qe"``, ``"alpha-qe:n=10,alpha=3"``, ``"dba:n=5,gap=0"``,
        ``"k-reciprocal:k1=20,k2=6,lambda=0.3"``, ``"auto"``, ``"auto:tightness=1.2"``.
        Names are case-insensitive.

    Returns
    -------
    RerankSpec

    Raises
    ------
    ValueError
        Unknown name (lists the names), unknown parameter (lists the parameters of
        that method), a malformed ``param=value`` item, or a value of the wrong type
        or out of range (names the parameter, the expectation and the value).
    """
    if isinstance(spec, RerankSpec):
        return spec
    if not isinstance(spec, str):
        raise ArgumentTypeError(f"rerank spec must be a str like 'qe' or 'k-reciprocal:k1=20'; got {type(spec).__name__}")
    text = spec.strip()
    name, _, rest = text.partition(":")
    key = name.strip().lower()
    canon = _ALIASES.get(key)
    if canon is None:
        raise ArgumentError(f"unknown re-ranking {name.strip()!r} in spec {spec!r}; expected one of "
                         f"{rerank_names()} (aliases: aqe, krr), optionally followed by ':param=value,...'")
    table = PARAMS[canon]
    params = {p: d[1] for p, d in table.items()}
    if rest.strip():
        for item in rest.split(","):
            pname, eq, value = item.partition("=")
            pname = pname.strip().lower()
            if not eq or not pname or not value.strip():
                raise ArgumentError(f"malformed re-ranking parameter {item.strip()!r} in spec {spec!r}; "
                                 "expected 'param=value'")
            if pname not in table:
                raise ArgumentError(f"unknown parameter {pname!r} for re-ranking {canon!r}; expected one of "
                                 f"{list(table)}")
            typ, _default, lo, _inc, _doc = table[pname]
            try:
                parsed = typ(value.strip()) if typ is float else int(value.strip(), 10)
            except ValueError:
                raise ArgumentError(f"re-ranking {canon!r} parameter {pname!r} must be "
                                 f"{'an integer' if typ is int else 'a number'}; got {value.strip()!r}") from None
            if typ is float and not np.isfinite(parsed):
                raise ArgumentError(f"re-ranking {canon!r} parameter {pname!r} must be finite; got {value.strip()!r}")
            hi = _UPPER.get((canon, pname))
            if parsed < lo or (hi is not None and parsed > hi):
                rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
                raise ArgumentError(f"re-ranking {canon!r} parameter {pname!r} must be {rng}; got {parsed}")
            params[pname] = parsed
    return RerankSpec(canon, params)


# ---------------------------------------------------------------------------
# natural spaces and weights
# ---------------------------------------------------------------------------

def _metric(metric: Any):
    from fastimg.metrics import get_metric
    return get_metric(metric)


def expansion_space(metric: Any, x: npt.ArrayLike) -> np.ndarray:
    """Map vectors to the space where a metric's averages are taken.

    Parameters
    ----------
    metric : str or Metric
    x : array_like, shape (n, D) or (D,)

    Returns
    -------
    ndarray of float64, same shape
        ``fastimg.metrics.embed(metric.mean_space, x)``: pearson, centred unit
        vectors; cosine, unit vectors; histogram metrics (``Metric.nonneg``),
        L1-normalised histograms; l2/l1, the vectors.  Zero vectors (constant
        ones for pearson, exactly equal values) map to zeros.
    """
    from fastimg.metrics import embed

    return embed(_metric(metric).mean_space, x)


def similarity(metric: Any, query: npt.ArrayLike, rows: npt.ArrayLike) -> np.ndarray:
    """Similarity in [0, 1] of ``rows`` to ``query``, used for ``sim^alpha`` weights.

    Parameters
    ----------
    metric : str or Metric
    query : array_like, shape (D,)
    rows : array_like, shape (n, D)

    Returns
    -------
    ndarray of float64, shape (n,)
        pearson: correlation; cosine: cosine; histogram metrics: Bhattacharyya
        coefficient of the L1-normalised histograms; l2/l1: cosine.  Clipped to [0, 1].
    """
    m = _metric(metric)
    q = _unit_embedding(m, np.atleast_2d(np.asarray(query, dtype=np.float64)))[0]
    r = _unit_embedding(m, np.atleast_2d(np.asarray(rows, dtype=np.float64)))
    return np.clip(r @ q, 0.0, 1.0)


def expand(metric: Any, base: npt.ArrayLike, neighbours: npt.ArrayLike, weights: npt.ArrayLike) -> np.ndarray:
    """Weighted mean of ``base`` (weight 1) and ``neighbours``, in the metric's natural space.

    Parameters
    ----------
    metric : str or Metric
    base : array_like, shape (D,)
        The query (QE) or the database vector (DBA).
    neighbours : array_like, shape (n, D)
    weights : array_like, shape (n,)
        Non-negative weights of the neighbours.

    Returns
    -------
    ndarray of float32, shape (D,)
        ``(e(base) + sum_i w_i e(x_i)) / (1 + sum_i w_i)`` with ``e`` =
        :func:`expansion_space`; for histogram metrics multiplied by ``sum(base)`` so
        the result has the base's mass (it stays non-negative).
    """
    m = _metric(metric)
    b = np.asarray(base, dtype=np.float64)
    nb = np.atleast_2d(np.asarray(neighbours, dtype=np.float64))
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if nb.shape[0] != w.shape[0]:
        raise ArgumentError(f"weights must have one value per neighbour ({nb.shape[0]}); got {w.shape[0]}")
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ArgumentError("weights must be finite and >= 0")
    eb = expansion_space(m, b)
    en = expansion_space(m, nb) if nb.shape[0] else np.zeros((0, b.shape[0]))
    out = (eb + w @ en) / (1.0 + w.sum())
    return _rescale(m, out, b.sum()).astype(np.float32)


def _rescale(m: Any, mean: np.ndarray, mass: Any) -> np.ndarray:
    """Back from the averaging space: an L1-normalised mean (histogram metrics)
    is clipped at 0 and given the base's mass (``mass``: a scalar or (n, 1))."""
    if m.mean_space == "l1":
        return np.maximum(mean, 0.0) * mass
    return mean



def collection_tightness(vectors: npt.ArrayLike, metric: Any = "pearson", *, search: Optional[SearchFn] = None,
                         sample: int = 64, depth: int = 200, seed: int = 0) -> Optional[float]:
    """The tightness of a collection: :func:`local_tightness` of sampled rows' local graphs, median.

    Computed once per collection (an index can cache it) and given to ``auto`` as
    ``"auto:tightness=<value>"``, it replaces the per-query estimate (the same
    statistic over one query's candidates, noisier).

    Parameters
    ----------
    vectors : array_like, shape (N, D)
        The database (a memmap is fine: only the sampled rows and their neighbours are read).
    metric : str or Metric
    search : callable ``(vectors (m, D), k) -> (ids, scores)``, optional
        Search over ``vectors``; default an exact :class:`fastimg.search.ExactSearcher`.
    sample : int
        Rows sampled (deterministically from ``seed``).
    depth : int
        Neighbours of each sampled row in its local graph (as ``auto``'s ``depth``).

    Returns
    -------
    float or None
        None when the collection has fewer than ``AUTO_MIN_CANDIDATES + 1`` rows.
    """
    m = _metric(metric)
    x = np.asarray(vectors)
    if x.ndim != 2:
        raise ArgumentError(f"vectors must be 2-D (N, D); got shape {x.shape}")
    for name, v, lo in (("sample", sample, 1), ("depth", depth, AUTO_MIN_CANDIDATES)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ArgumentError(f"{name} must be an int >= {lo}; got {name}={v!r}")
    n = x.shape[0]
    if n < AUTO_MIN_CANDIDATES + 1:
        return None
    if search is None:
        from fastimg.search import ExactSearcher

        searcher = ExactSearcher(np.ascontiguousarray(x, dtype=np.float32), m.name)

        def search(v: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
            return searcher.search(v, k)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    q = np.ascontiguousarray(x[rows], dtype=np.float32)
    if not np.all(np.isfinite(q)):
        raise ArgumentError("vectors contain NaN or inf (drop failed rows first)")
    ids, _ = search(q, min(depth + 1, n))
    ids = np.asarray(ids, dtype=np.int64).reshape(len(rows), -1)
    vals = []
    with _one_blas_thread():
        for r, row in enumerate(rows):
            cand = ids[r][(ids[r] >= 0) & (ids[r] != row)][:depth]
            if cand.shape[0] < AUTO_MIN_CANDIDATES:
                continue
            z = np.vstack([q[r].astype(np.float64)[None, :], np.asarray(x[cand], dtype=np.float64)])
            t = local_tightness(_pairwise_distance(m, z))
            if t is not None:
                vals.append(t)
    return float(np.median(vals)) if vals else None


# ---------------------------------------------------------------------------
# the query-time entry point
# ---------------------------------------------------------------------------

def _validate(query_vec: Any, ids: Any, scores: Any, k: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    q = np.asarray(query_vec, dtype=np.float32)
    if q.ndim != 1:
        raise ArgumentError(f"query_vec must be 1-D (D,); got shape {q.shape}")
    if not np.all(np.isfinite(q)):
        raise ArgumentError("query_vec contains NaN or inf")
    i = np.asarray(ids)
    s = np.asarray(scores, dtype=np.float32)
    if i.ndim != 1 or not np.issubdtype(i.dtype, np.integer):
        raise ArgumentError(f"ids must be a 1-D integer array; got {i.dtype} {i.shape}")
    if s.shape != i.shape:
        raise ArgumentError(f"scores must have the shape of ids {i.shape}; got {s.shape}")
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ArgumentError(f"k must be an int >= 1; got k={k!r}")
    keep = i >= 0
    return q, i[keep].astype(np.int64), s[keep], int(k)


def _search1(search: SearchFn, v: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    ids, sc = search(np.asarray(v, dtype=np.float32).reshape(1, -1), k)
    ids, sc = np.asarray(ids).reshape(-1).astype(np.int64), np.asarray(sc, dtype=np.float32).reshape(-1)
    keep = ids >= 0
    return ids[keep], sc[keep]


def candidates_needed(spec: "str | RerankSpec", k: int) -> int:
    """How many initial results :func:`apply` uses for ``spec`` and ``k``.

    A caller that searches this many in the first place (instead of ``k``) spares
    :func:`apply` its second search for more candidates.
    """
    sp = parse_spec(spec)
    p = sp.params
    if sp.name in ("qe", "alpha-qe"):
        # QE searches again for its k results anyway; the gap test needs the ref-th
        return max(int(p["n"]), int(p["ref"]) if p["gap"] > 0 else 1, 1)
    return max(int(p["depth"]), 1, int(k))


def _candidates(search: SearchFn, q: np.ndarray, ids: np.ndarray, scores: np.ndarray, need: int,
                complete: bool) -> Tuple[np.ndarray, np.ndarray]:
    if ids.shape[0] < need and not complete:
        ids, scores = _search1(search, q, need)
    return ids, scores


_CONTROLLER: Any = None


def _one_blas_thread() -> Any:
    """Context manager capping BLAS to one thread: the matrices here are tiny, and a
    multi-threaded BLAS on a busy machine makes a small product much slower
    (bench/bench_rerank.py measures the cost per query)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


def apply(spec: "str | RerankSpec", query_vec: npt.ArrayLike, ids: npt.ArrayLike, scores: npt.ArrayLike, *,
          get_vectors: GetVectors, search: SearchFn, k: int, metric: Any = "pearson", complete: bool = False
          ) -> Tuple[np.ndarray, np.ndarray]:
    """Re-rank one query's results.

    Parameters
    ----------
    spec : str or RerankSpec
        See :func:`parse_spec`.
    query_vec : array_like, shape (D,)
        The query's descriptor.
    ids, scores : array_like, shape (L,)
        The initial ranking, best first (``-1`` ids are ignored).  If it is shorter
        than a method needs (:func:`candidates_needed`: ``depth`` candidates, or
        ``n`` for QE), ``search`` is called for more, unless ``complete``.
    get_vectors : callable ``(ids (n,)) -> (n, D)``
        Database vectors by id.
    search : callable ``(vectors (m, D), k) -> (ids (m, k), scores (m, k))``
        The same search that produced ``ids`` (exact or approximate), with the same
        exclusions (e.g. the query's own id).
    k : int
        Number of results to return.
    metric : str or Metric
        The metric of ``scores`` and of ``search``.
    complete : bool, default False
        ``ids`` already holds every result ``search`` could return (the initial
        search asked for more than it got): never search again for candidates.

    Returns
    -------
    ids : ndarray of int64, shape (<= k,)
        Best first.
    scores : ndarray of float32, same shape
        In the metric's orientation (higher is better iff the metric is a
        similarity).  QE: the metric between the *expanded* query and each result;
        DBA: between the query and the augmented candidate; k-reciprocal: ``1 - d*``
        for similarity metrics, ``d*`` for distances.  Candidates past ``depth``
        (DBA, k-reciprocal, when ``k > depth``) keep their initial order and score.
    """
    sp = parse_spec(spec)
    m = _metric(metric)
    q, ids_, sc_, k = _validate(query_vec, ids, scores, k)
    with _one_blas_thread():
        return _apply(sp, m, q, ids_, sc_, get_vectors, search, k, bool(complete))


def _gap_keep(d: np.ndarray, n: int, gap: float, ref: int) -> np.ndarray:
    """Which of the first ``n`` of the ascending distances ``d`` pass the gap test:
    below ``gap`` times the ``ref``-th (or the last, when fewer)."""
    return d[:n] < gap * d[min(ref, d.shape[0]) - 1]


def _apply(sp: RerankSpec, m: Any, q: np.ndarray, ids_: np.ndarray, sc_: np.ndarray, get_vectors: GetVectors,
           search: SearchFn, k: int, complete: bool) -> Tuple[np.ndarray, np.ndarray]:
    p = sp.params
    ids_, sc_ = _candidates(search, q, ids_, sc_, candidates_needed(sp, k), complete)
    if sp.name in ("qe", "alpha-qe"):
        top = ids_[:p["n"]]
        if p["gap"] > 0 and top.shape[0]:
            ref = ids_[:max(p["ref"], p["n"])]
            xr = np.asarray(get_vectors(ref), dtype=np.float64)
            keep = _gap_keep(_distances_from(m, q, xr), p["n"], p["gap"], p["ref"])
            top, x = top[keep], xr[:top.shape[0]][keep]
            if top.shape[0] == 0:  # no neighbour close enough: nothing to expand with
                return (ids_[:k], sc_[:k]) if ids_.shape[0] >= k or complete else _search1(search, q, k)
        elif top.shape[0] == 0:
            return ids_[:k], sc_[:k]
        else:
            x = np.asarray(get_vectors(top), dtype=np.float64)
        alpha = p.get("alpha", 0.0)
        w = similarity(m, q, x) ** alpha if alpha > 0 else np.ones(top.shape[0])
        return _search1(search, expand(m, q, x, w), k)
    if sp.name == "dba":
        depth = max(p["depth"], 1)
        head = ids_[:depth]
        if head.shape[0] == 0:
            return ids_[:k], sc_[:k]
        # the local graph: the query and its candidates (no extra search of the database);
        # a candidate's neighbours are sought among the other nodes, the query included
        z = np.vstack([q.astype(np.float64)[None, :], np.asarray(get_vectors(head), dtype=np.float64)])
        dist = _pairwise_distance(m, z)[1:]
        local = np.argsort(dist, axis=1, kind="stable")[:, :p["n"] + 1]
        if p["gap"] > 0:
            own = np.arange(1, z.shape[0])
            srt = np.sort(np.where(np.arange(z.shape[0])[None, :] == own[:, None], np.inf, dist), axis=1)[:, :-1]
            ref_d = srt[:, min(p["ref"], srt.shape[1]) - 1]
            near = np.take_along_axis(dist, local, axis=1)
            local = np.where(near < p["gap"] * ref_d[:, None], local, -1)
        aug = _augment_rows(m, z[1:], np.arange(1, z.shape[0]), local, p["n"], p["alpha"], lambda i: z[i])
        from fastimg.metrics import exact_scores
        new = exact_scores(m, q, aug)
        order = np.lexsort((head, -new if m.higher_is_better else new))
        out_ids = np.concatenate([head[order], ids_[depth:]])[:k]
        out_sc = np.concatenate([new[order].astype(np.float32), sc_[depth:]])[:k]
        return out_ids, out_sc
    depth = p["depth"]
    head = ids_[:depth]
    if sp.name == "auto":
        if head.shape[0] < AUTO_MIN_CANDIDATES:  # too few candidates to see any structure
            return ids_[:k], sc_[:k]
        z = np.vstack([q.astype(np.float64)[None, :], np.asarray(get_vectors(head), dtype=np.float64)])
        dist = _pairwise_distance(m, z)
        t = p["tightness"] if p["tightness"] is not None else local_tightness(dist)
        if t is None:  # all distances equal: no structure
            return ids_[:k], sc_[:k]
        kr = AUTO_SMALL if t > p["threshold"] else AUTO_LARGE
        rank = np.argsort(dist, axis=1, kind="stable")
        if not _reciprocal(rank, kr["k1"])[0, 1:].any():
            return ids_[:k], sc_[:k]  # the query is nobody's close neighbour: nothing to re-rank with
        return _k_reciprocal_rerank(m, head, dist, kr["k1"], kr["k2"], kr["lambda"], ids_, sc_, depth, k)
    # k-reciprocal
    if head.shape[0] < 2:
        return ids_[:k], sc_[:k]
    z = np.vstack([q.astype(np.float64)[None, :], np.asarray(get_vectors(head), dtype=np.float64)])
    dist = _pairwise_distance(m, z)
    return _k_reciprocal_rerank(m, head, dist, p["k1"], p["k2"], p["lambda"], ids_, sc_, depth, k)


def _k_reciprocal_rerank(m: Any, head: np.ndarray, dist: np.ndarray, k1: int, k2: int, lam: float,
                         ids_: np.ndarray, sc_: np.ndarray, depth: int, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Order ``head`` by the k-reciprocal distance (``dist``: the query then ``head``);
    candidates past ``depth`` keep their order and scores."""
    final = k_reciprocal_distance(dist, k1, k2, lam)[0]
    order = np.lexsort((head, final))
    out = final[order]
    new_sc = (1.0 - out) if m.higher_is_better else out
    out_ids = np.concatenate([head[order], ids_[depth:]])[:k]
    out_sc = np.concatenate([new_sc.astype(np.float32), sc_[depth:]])[:k]
    return out_ids, out_sc


def _augment_rows(m: Any, x: np.ndarray, self_ids: np.ndarray, nb_ids: np.ndarray, n: int, alpha: float,
                  get_vectors: GetVectors) -> np.ndarray:
    """DBA of rows ``x`` (ids ``self_ids``) from their search results ``nb_ids`` (self and -1 dropped)."""
    nb = np.asarray(nb_ids).astype(np.int64).reshape(x.shape[0], -1)
    ok = (nb >= 0) & (nb != self_ids[:, None])
    order = np.argsort(~ok, axis=1, kind="stable")[:, :n]  # first n valid neighbours, in rank order
    nb = np.take_along_axis(nb, order, axis=1)
    ok = np.take_along_axis(ok, order, axis=1)
    flat = nb[ok]
    vecs = np.zeros(nb.shape + (x.shape[1],))
    if flat.size:
        vecs[ok] = np.asarray(get_vectors(flat), dtype=np.float64)
    ex = expansion_space(m, x)
    en = expansion_space(m, vecs.reshape(-1, x.shape[1])).reshape(vecs.shape)
    if alpha > 0:
        ue = _unit_embedding(m, x)
        un = _unit_embedding(m, vecs.reshape(-1, x.shape[1])).reshape(vecs.shape)
        w = np.clip(np.einsum("rnd,rd->rn", un, ue), 0.0, 1.0) ** alpha
    else:
        w = np.ones(nb.shape)
    w = np.where(ok, w, 0.0)
    out = (ex + np.einsum("rn,rnd->rd", w, en)) / (1.0 + w.sum(axis=1))[:, None]
    return _rescale(m, out, x.sum(axis=1)[:, None])


# ---------------------------------------------------------------------------
# offline DBA over a whole matrix
# ---------------------------------------------------------------------------

def augment_database(vectors: npt.ArrayLike, metric: Any = "pearson", *, n: int = 5, alpha: float = 3.0,
                     search: Optional[SearchFn] = None, batch: int = 4096) -> np.ndarray:
    """Database-side augmentation (DBA) of every row of a matrix.

    Each row ``x`` is replaced by :func:`expand` ``(x, its n nearest other rows,
    sim^alpha)``; the neighbours are those of the *original* matrix.

    Parameters
    ----------
    vectors : array_like, shape (N, D)
    metric : str or Metric
    n : int >= 1
        Neighbours per row (defaults as ``"dba"`` in :data:`PARAMS`).
    alpha : float >= 0
        Weight exponent (0 = uniform weights).
    search : callable ``(vectors (m, D), k) -> (ids, scores)``, optional
        Search over ``vectors``; default an exact
        :class:`fastimg.search.ExactSearcher` over ``vectors``.
    batch : int
        Rows searched per call.

    Returns
    -------
    ndarray of float32, shape (N, D)
        A new matrix (the input is not modified); index it instead of the original.
    """
    m = _metric(metric)
    x = np.asarray(vectors)
    if x.ndim != 2:
        raise ArgumentError(f"vectors must be 2-D (N, D); got shape {x.shape}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ArgumentError(f"n must be an int >= 1; got n={n!r}")
    if not (alpha >= 0 and np.isfinite(alpha)):
        raise ArgumentError(f"alpha must be a finite number >= 0; got alpha={alpha!r}")
    if not np.all(np.isfinite(x)):
        raise ArgumentError("vectors contain NaN or inf (drop failed rows first)")
    nrows = x.shape[0]
    kk = min(n + 1, nrows)
    if search is None:
        from fastimg.search import ExactSearcher

        searcher = ExactSearcher(np.ascontiguousarray(x, dtype=np.float32), m.name)

        def search(v: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
            return searcher.search(v, k)
    out = np.empty(x.shape, dtype=np.float32)
    for start in range(0, nrows, batch):
        stop = min(nrows, start + batch)
        nb_ids, _ = search(np.ascontiguousarray(x[start:stop], dtype=np.float32), kk)
        out[start:stop] = _augment_rows(m, np.asarray(x[start:stop], dtype=np.float64),
                                        np.arange(start, stop), np.asarray(nb_ids), n, alpha, lambda i: x[i])
    return out
