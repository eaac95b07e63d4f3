"""Retrieval quality: standard metrics, dataset layouts, and :func:`evaluate` (behind ``fastimg eval``).

Metrics (pure functions of a ranked relevance list, no I/O):

* :func:`average_precision` / :func:`mean_average_precision` - standard
  non-interpolated AP: the mean, over the ``n_relevant`` relevant items, of the
  precision at the rank where each is retrieved (0 for relevant items that are
  not retrieved).
* :func:`precision_at_k`, :func:`recall_at_k`.
* :func:`ukbench_ns_score` - Nister & Stewenius' score: the number of the 4
  group members found in the top 4 (the query itself counts, max 4).

Evaluators (vectorised over queries):

* :func:`rank_by_scores` - a full score matrix to rankings (ties by lower id).
* :func:`evaluate_ranking` - rankings (ids) + labels to a dict of metric values.
* :func:`evaluate_scores` - "every item queries the rest" from a score matrix.

Conventions
-----------
A query with **no relevant item** (``n_relevant == 0``) has AP = 0, R@k = 0 for
the scalar functions; the means (:func:`mean_average_precision`,
:func:`evaluate_ranking`) *skip* such queries, as ``trec_eval`` does, and report
how many were skipped.  Ranked ids equal to ``-1`` (padding) are never relevant.
"""
from __future__ import annotations

import os
import re
from typing import Any, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

from fastimg.datasets import DEFAULT_MEASURES, LAYOUTS, Dataset, load_dataset
from fastimg.errors import ArgumentError, ArgumentTypeError, DatasetError

__all__ = [
    "average_precision",
    "mean_average_precision",
    "precision_at_k",
    "recall_at_k",
    "ukbench_ns_score",
    "rank_by_scores",
    "relevance_matrix",
    "evaluate_ranking",
    "evaluate_scores",
    "parse_metric",
    "Dataset",
    "load_dataset",
    "LAYOUTS",
    "evaluate",
    "parse_descriptor",
    "format_table",
]

ArrayLike = npt.ArrayLike


# ---------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------

def _as_relevance(ranked_relevance: ArrayLike, name: str = "ranked_relevance") -> np.ndarray:
    """Coerce to a bool array of ndim 1 or 2; 0/1 numbers are accepted."""
    rel = np.asarray(ranked_relevance)
    if rel.ndim not in (1, 2):
        raise ArgumentError(f"{name} must be 1-D (one ranking) or 2-D (one ranking per row); got shape {rel.shape}")
    if rel.dtype != np.bool_:
        if rel.size and not np.isin(rel, (0, 1)).all():
            raise ArgumentError(f"{name} must hold booleans (or 0/1); got values other than 0 and 1")
        rel = rel.astype(bool)
    return rel


def _as_n_relevant(n_relevant: Optional[ArrayLike], rel: np.ndarray) -> np.ndarray:
    """Per-row number of relevant items, checked against the ranking (int64, shape rel.shape[:-1])."""
    found = rel.sum(axis=-1)
    if n_relevant is None:
        return np.asarray(found, dtype=np.int64)
    n = np.asarray(n_relevant)
    if not np.issubdtype(n.dtype, np.integer):
        if not (np.isfinite(n).all() and np.all(n == np.round(n))):
            raise ArgumentError(f"n_relevant must be a non-negative integer; got {n_relevant!r}")
        n = n.astype(np.int64)
    if n.shape != found.shape:
        if n.ndim == 0:
            n = np.broadcast_to(n, found.shape)
        else:
            raise ArgumentError(f"n_relevant must be a scalar or have shape {found.shape} (one per ranking); "
                             f"got shape {n.shape}")
    if np.any(n < 0):
        raise ArgumentError(f"n_relevant must be >= 0; got {n_relevant!r}")
    if np.any(found > n):
        bad = int(np.argmax(found > n)) if found.ndim else 0
        raise ArgumentError(
            "n_relevant is smaller than the number of relevant items in the ranking "
            f"(ranking {bad}: n_relevant={int(np.ravel(n)[bad])}, found {int(np.ravel(found)[bad])})")
    return n.astype(np.int64)


def _check_k(k: int, name: str = "k") -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise ArgumentTypeError(f"{name} must be an int >= 1; got {k!r}")
    if k < 1:
        raise ArgumentError(f"{name} must be >= 1; got {name}={k}")
    return int(k)


def _scalar_or_array(x: np.ndarray, one: bool) -> Union[float, np.ndarray]:
    return float(x) if one else x


# ---------------------------------------------------------------------------
# metrics on ranked relevance lists
# ---------------------------------------------------------------------------

def average_precision(ranked_relevance: ArrayLike, n_relevant: Optional[ArrayLike] = None
                      ) -> Union[float, np.ndarray]:
    r"""Non-interpolated average precision of ranked list(s).

    .. math:: \mathrm{AP} = \frac{1}{R} \sum_{i:\ \mathrm{rel}_i} P@i,
              \qquad P@i = \frac{|\{j \le i : \mathrm{rel}_j\}|}{i}

    Parameters
    ----------
    ranked_relevance : array_like of bool, shape (L,) or (Q, L)
        ``ranked_relevance[..., i]`` is True if the item at rank ``i`` (0 = best) is
        relevant.  The query itself must not be in the list unless it counts as
        relevant (UKBench style).
    n_relevant : int or array_like of int, shape (Q,), optional
        ``R``, the number of relevant items in the whole collection.  Relevant items
        missing from a truncated list contribute precision 0.  Default: the number
        of True values in the list (the list is assumed complete).

    Returns
    -------
    float or ndarray of float64, shape (Q,)
        AP in [0, 1].  A ranking with ``n_relevant == 0`` has AP **0.0** (nothing to
        find; :func:`mean_average_precision` skips such queries instead).

    Raises
    ------
    ValueError
        If the list has more relevant items than ``n_relevant``, or on bad shapes.

    Examples
    --------
    >>> average_precision([True, False, True, False])   # (1/1 + 2/3) / 2
    0.8333333333333333
    >>> average_precision([True, False, True, False], n_relevant=4)
    0.41666666666666663
    """
    rel = _as_relevance(ranked_relevance)
    n = _as_n_relevant(n_relevant, rel)
    hits = np.cumsum(rel, axis=-1, dtype=np.float64)
    ranks = np.arange(1, rel.shape[-1] + 1, dtype=np.float64)
    prec_sum = np.where(rel, hits / ranks, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(n > 0, prec_sum / np.maximum(n, 1), 0.0)
    return _scalar_or_array(ap, rel.ndim == 1)


def mean_average_precision(ranked_relevance: ArrayLike, n_relevant: Optional[ArrayLike] = None) -> float:
    """Mean of :func:`average_precision` over queries that have a relevant item.

    Parameters
    ----------
    ranked_relevance : array_like of bool, shape (Q, L)
        One ranked relevance list per query (see :func:`average_precision`).
    n_relevant : int or array_like of int, shape (Q,), optional
        Relevant items per query in the collection; default: the count in each row.

    Returns
    -------
    float
        mAP over the queries with ``n_relevant > 0`` (queries without any relevant
        item are skipped, as in ``trec_eval``).

    Raises
    ------
    ValueError
        If no query has a relevant item, or on bad input (see
        :func:`average_precision`).
    """
    rel = _as_relevance(ranked_relevance)
    if rel.ndim != 2:
        raise ArgumentError(f"ranked_relevance must be 2-D (Q, L); got shape {rel.shape}")
    n = _as_n_relevant(n_relevant, rel)
    keep = n > 0
    if not keep.any():
        raise ArgumentError("mean_average_precision: no query has any relevant item (n_relevant is 0 for all)")
    ap = average_precision(rel[keep], n[keep])
    return float(np.mean(ap))


def precision_at_k(ranked_relevance: ArrayLike, k: int) -> Union[float, np.ndarray]:
    """Fraction of the top ``k`` that is relevant.

    Parameters
    ----------
    ranked_relevance : array_like of bool, shape (L,) or (Q, L)
    k : int >= 1
        Cut-off.  If the list is shorter than ``k`` the missing positions count as
        not relevant (the denominator stays ``k``).

    Returns
    -------
    float or ndarray of float64, shape (Q,)
    """
    rel = _as_relevance(ranked_relevance)
    k = _check_k(k)
    p = rel[..., :k].sum(axis=-1) / float(k)
    return _scalar_or_array(np.asarray(p, dtype=np.float64), rel.ndim == 1)


def recall_at_k(ranked_relevance: ArrayLike, k: int, n_relevant: Optional[ArrayLike] = None
                ) -> Union[float, np.ndarray]:
    """Fraction of the relevant items found in the top ``k``.

    Parameters
    ----------
    ranked_relevance : array_like of bool, shape (L,) or (Q, L)
    k : int >= 1
    n_relevant : int or array_like of int, optional
        Relevant items in the collection; default: the count in the list.

    Returns
    -------
    float or ndarray of float64, shape (Q,)
        0.0 for a ranking with ``n_relevant == 0``.
    """
    rel = _as_relevance(ranked_relevance)
    k = _check_k(k)
    n = _as_n_relevant(n_relevant, rel)
    found = rel[..., :k].sum(axis=-1)
    r = np.where(n > 0, found / np.maximum(n, 1), 0.0)
    return _scalar_or_array(np.asarray(r, dtype=np.float64), rel.ndim == 1)


def ukbench_ns_score(ranked_relevance: ArrayLike) -> Union[float, np.ndarray]:
    """UKBench N-S score: relevant items among the top 4.

    Nister & Stewenius (CVPR 2006): every image queries the whole collection *including
    itself*, and the score counts how many of its group's 4 images are in the top 4;
    the mean over queries is reported (max 4.0).

    Parameters
    ----------
    ranked_relevance : array_like of bool, shape (L,) or (Q, L)
        Relevance of the ranked list **including the query** (relevant to itself).

    Returns
    -------
    float or ndarray of float64, shape (Q,)
        Per query counts in [0, 4] (1-D input: one count).  Take ``.mean()`` of the
        2-D result for the dataset score.
    """
    rel = _as_relevance(ranked_relevance)
    s = rel[..., :4].sum(axis=-1).astype(np.float64)
    return _scalar_or_array(s, rel.ndim == 1)


# ---------------------------------------------------------------------------
# from scores / ids to relevance
# ---------------------------------------------------------------------------

def rank_by_scores(scores: ArrayLike, *, higher_is_better: bool = True,
                   exclude: Optional[ArrayLike] = None) -> np.ndarray:
    """Rank every column of a score matrix for each row, ties broken by lower id.

    Parameters
    ----------
    scores : array_like, shape (Q, N)
        ``scores[q, i]`` = score of database item ``i`` for query ``q``.
    higher_is_better : bool, default True
        False for distances.
    exclude : array_like of int, shape (Q,), optional
        One database id per query to leave out of its ranking, e.g. the query
        itself for leave-one-out protocols.

    Returns
    -------
    ndarray of int64, shape (Q, N) or (Q, N - 1)
        Ranked ids, best first; with ``exclude`` every row drops its excluded id.

    Raises
    ------
    ValueError
        On NaN scores, bad shapes, or out-of-range ``exclude`` ids.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ArgumentError(f"scores must be 2-D (Q, N); got shape {s.shape}")
    if np.isnan(s).any():
        raise ArgumentError("scores contain NaN; drop or fix the failed rows first")
    key = -s if higher_is_better else s
    order = np.argsort(key, axis=1, kind="stable")  # stable: equal scores keep id order
    if exclude is None:
        return order.astype(np.int64)
    ex = np.asarray(exclude)
    if ex.shape != (s.shape[0],) or not np.issubdtype(ex.dtype, np.integer):
        raise ArgumentError(f"exclude must be integer ids of shape ({s.shape[0]},); got {ex.dtype} {ex.shape}")
    if np.any((ex < 0) | (ex >= s.shape[1])):
        raise ArgumentError(f"exclude ids must be in [0, {s.shape[1]}); got min {ex.min()}, max {ex.max()}")
    keep = order != ex[:, None]
    return order[keep].reshape(s.shape[0], s.shape[1] - 1).astype(np.int64)


def _drop_ids(ranked_ids: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """Remove ``drop[q]`` from row q (order kept), padding the row end with -1."""
    hit = ranked_ids == drop[:, None]
    if not hit.any():
        return ranked_ids
    order = np.argsort(hit, axis=1, kind="stable")  # kept entries first, in order
    out = np.take_along_axis(ranked_ids, order, axis=1)
    out[np.take_along_axis(hit, order, axis=1)] = -1
    return out


def relevance_matrix(ranked_ids: ArrayLike, labels: ArrayLike, query_labels: ArrayLike) -> np.ndarray:
    """Boolean relevance of ranked ids: ``labels[ranked_ids[q, i]] == query_labels[q]``.

    Parameters
    ----------
    ranked_ids : array_like of int, shape (Q, L)
        Database ids, best first; ``-1`` entries (padding) are never relevant.
    labels : array_like, shape (N,)
        Class / group of every database item.
    query_labels : array_like, shape (Q,)

    Returns
    -------
    ndarray of bool, shape (Q, L)
    """
    ids = np.asarray(ranked_ids)
    lab = np.asarray(labels)
    ql = np.asarray(query_labels)
    if ids.ndim != 2:
        raise ArgumentError(f"ranked_ids must be 2-D (Q, L); got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ArgumentError(f"ranked_ids must be integers; got dtype {ids.dtype}")
    if lab.ndim != 1:
        raise ArgumentError(f"labels must be 1-D (N,); got shape {lab.shape}")
    if ql.shape != (ids.shape[0],):
        raise ArgumentError(f"query_labels must have shape ({ids.shape[0]},); got {ql.shape}")
    if ids.size and (ids.max() >= lab.shape[0] or ids.min() < -1):
        raise ArgumentError(f"ranked_ids must be in [0, {lab.shape[0]}) or -1 (padding); "
                         f"got min {ids.min()}, max {ids.max()}")
    valid = ids >= 0
    rel = np.zeros(ids.shape, dtype=bool)
    rel[valid] = lab[ids[valid]] == np.broadcast_to(ql[:, None], ids.shape)[valid]
    return rel


_METRIC_RE = re.compile(r"^(map|p|r|ns)(?:@(\d+))?$")


def parse_metric(name: str) -> tuple[str, Optional[int]]:
    """Parse a metric name: ``"map"``, ``"map@K"``, ``"p@K"``, ``"r@K"`` or ``"ns"``.

    Returns
    -------
    (kind, k) : tuple of str and int or None
        ``kind`` in {"map", "p", "r", "ns"}; ``k`` is the cut-off (None for full mAP
        and N-S).

    Raises
    ------
    ValueError
        For any other name (message lists the accepted forms).
    """
    if not isinstance(name, str):
        raise ArgumentTypeError(f"metric name must be a str; got {type(name).__name__}")
    m = _METRIC_RE.match(name.strip().lower())
    if not m or (m.group(1) in ("p", "r") and m.group(2) is None) or (m.group(1) == "ns" and m.group(2)):
        raise ArgumentError(f"unknown evaluation metric {name!r}; expected 'map', 'map@K', 'p@K', 'r@K' "
                         "or 'ns' (K a positive integer)")
    k = int(m.group(2)) if m.group(2) else None
    if k is not None and k < 1:
        raise ArgumentError(f"metric cut-off must be >= 1; got {name!r}")
    return m.group(1), k


DEFAULT_METRICS = ("map", "p@10", "r@10")


def evaluate_ranking(ranked_ids: ArrayLike, labels: ArrayLike, query_ids: Optional[ArrayLike] = None, *,
                     query_labels: Optional[ArrayLike] = None, exclude_query: bool = True,
                     metrics: Sequence[str] = DEFAULT_METRICS) -> dict:
    """Score rankings against class labels, vectorised over queries.

    Parameters
    ----------
    ranked_ids : array_like of int, shape (Q, L)
        Ranked database ids per query, best first (``-1`` = padding).  ``L`` may be
        smaller than N (a truncated ranking: mAP then uses the full number of
        relevant items as denominator).
    labels : array_like, shape (N,)
        Class / group of every database item.
    query_ids : array_like of int, shape (Q,), optional
        Database id of each query when queries are database items (leave-one-out).
        Default ``arange(Q)``, unless ``query_labels`` is given.
    query_labels : array_like, shape (Q,), optional
        Labels of external queries (not in the database); then ``query_ids`` must be
        omitted and ``exclude_query`` is irrelevant.
    exclude_query : bool, default True
        The query is not part of its own ranking (removed if present) and does not
        count as relevant.  False: UKBench style, the query counts (N-S score).
    metrics : sequence of str
        Names accepted by :func:`parse_metric`.  ``map@K`` is AP over the top K
        with the full number of relevant items as denominator.

    Returns
    -------
    dict
        ``{metric_name: mean value}`` plus ``"n_queries"`` (queries averaged) and
        ``"n_skipped"`` (queries with no relevant item, left out of every mean).
    """
    ids = np.asarray(ranked_ids)
    if ids.ndim != 2:
        raise ArgumentError(f"ranked_ids must be 2-D (Q, L); got shape {ids.shape}")
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ArgumentError(f"labels must be 1-D (N,); got shape {lab.shape}")
    parsed = [(m, *parse_metric(m)) for m in metrics]
    q = ids.shape[0]
    if query_labels is not None:
        if query_ids is not None:
            raise ArgumentError("give query_ids (queries are database items) or query_labels (external "
                             "queries), not both")
        ql = np.asarray(query_labels)
        qid = None
    else:
        qid = np.arange(q) if query_ids is None else np.asarray(query_ids)
        if qid.shape != (q,) or not np.issubdtype(qid.dtype, np.integer):
            raise ArgumentError(f"query_ids must be integer ids of shape ({q},); got {qid.dtype} {qid.shape}")
        if q and (qid.min() < 0 or qid.max() >= lab.shape[0]):
            raise ArgumentError(f"query_ids must be in [0, {lab.shape[0]}); got min {qid.min()}, max {qid.max()}")
        ql = lab[qid]
        if exclude_query:
            ids = _drop_ids(ids.astype(np.int64), qid.astype(np.int64))
    rel = relevance_matrix(ids, lab, ql)
    # relevant items in the collection
    uniq, inv, counts = np.unique(lab, return_inverse=True, return_counts=True)
    pos = np.searchsorted(uniq, ql)
    pos_ok = (pos < uniq.shape[0]) & (uniq[np.minimum(pos, uniq.shape[0] - 1)] == ql)
    n_rel = np.where(pos_ok, counts[np.minimum(pos, uniq.shape[0] - 1)], 0).astype(np.int64)
    if qid is not None and exclude_query:
        n_rel = n_rel - 1
    keep = n_rel > 0
    out: dict = {}
    relk, nk = rel[keep], n_rel[keep]
    for name, kind, k in parsed:
        if not keep.any():
            out[name] = float("nan")
            continue
        r = relk if k is None else relk[:, :k]
        if kind == "map":
            out[name] = float(np.mean(average_precision(r, nk)))
        elif kind == "p":
            out[name] = float(np.mean(precision_at_k(relk, k)))
        elif kind == "r":
            out[name] = float(np.mean(recall_at_k(relk, k, nk)))
        else:  # ns
            out[name] = float(np.mean(ukbench_ns_score(relk)))
    out["n_queries"] = int(keep.sum())
    out["n_skipped"] = int(q - keep.sum())
    return out


def evaluate_scores(scores: ArrayLike, labels: ArrayLike, *, higher_is_better: bool = True,
                    exclude_self: bool = True, metrics: Sequence[str] = DEFAULT_METRICS) -> dict:
    """"Every item queries the rest": metrics from a square score matrix.

    Parameters
    ----------
    scores : array_like, shape (N, N)
        ``scores[q, i]``: score of item ``i`` for query ``q`` (e.g. all-pairs metric
        values).  Ties are broken by lower id.
    labels : array_like, shape (N,)
    higher_is_better : bool, default True
    exclude_self : bool, default True
        Leave each query out of its own ranking (Corel/Wang protocol).  False keeps
        it and counts it relevant (UKBench N-S protocol).
    metrics : sequence of str

    Returns
    -------
    dict
        As :func:`evaluate_ranking`.
    """
    s = np.asarray(scores)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ArgumentError(f"scores must be a square (N, N) matrix; got shape {s.shape}")
    n = s.shape[0]
    ex = np.arange(n) if exclude_self else None
    ranked = rank_by_scores(s, higher_is_better=higher_is_better, exclude=ex)
    return evaluate_ranking(ranked, labels, np.arange(n), exclude_query=exclude_self, metrics=metrics)


# ---------------------------------------------------------------------------
# dataset layouts
# ---------------------------------------------------------------------------











# ---------------------------------------------------------------------------
# evaluate descriptor x metric x re-ranking combinations
# ---------------------------------------------------------------------------

def _parse_value(text: str) -> Any:
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    if re.fullmatch(r"\d+(x\d+)+", low):
        return tuple(int(v) for v in low.split("x"))
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    return t


def parse_descriptor(spec: str, what: str = "descriptor") -> tuple:
    """``"name"`` or ``"name:param=value,..."`` -> ``(name, params)``.

    Values are read as int, float, bool (``true``/``false``), ``none``, a tuple of
    ints written ``8x12x3``, else kept as text.  E.g. ``"hsv:bins=8x12x3"`` ->
    ``("hsv", {"bins": (8, 12, 3)})``.  ``what`` names the kind of spec in
    errors (the same syntax serves the ``learn`` specs of :func:`evaluate`).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ArgumentError(f"{what} must be a non-empty name like 'hsv' or 'hsv:bins=8x12x3'; got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    params = {}
    if rest.strip():
        for item in rest.split(","):
            k, eq, v = item.partition("=")
            if not eq or not k.strip():
                raise ArgumentError(f"malformed {what} parameter {item.strip()!r} in {spec!r}; expected 'param=value'")
            params[k.strip()] = _parse_value(v)
    return name.strip(), params


def evaluate(root: "str | os.PathLike[str] | Dataset", layout: str = "folders", *,
             descriptors: Sequence[str] = ("hsv72",), metrics: Optional[Sequence[Optional[str]]] = None,
             reranks: Sequence[Optional[str]] = (None,), measures: Optional[Sequence[str]] = None,
             depth: Optional[int] = None, workers: Optional[int] = None, progress: bool = False,
             features: Optional[dict] = None, train_fraction: Optional[float] = None,
             splits: Sequence[str] = ("image",), seed: int = 0,
             learn: Optional[Sequence[Optional[str]]] = None) -> list:
    """Evaluate every descriptor x metric x re-ranking combination on a dataset.

    Features are extracted once per descriptor (:func:`fastimg.features.registry.describe_many`)
    and shared by all its metrics and re-rankings; the initial rankings are computed
    once per (descriptor, metric) with :class:`fastimg.search.ExactSearcher`, and each
    re-ranking is applied per query through :func:`fastimg.rerank.apply` with the
    same search as callback.

    Parameters
    ----------
    root : path or Dataset
        The collection (see :func:`load_dataset`), or an already loaded Dataset.
    layout : {"folders", "ukbench", "holidays"}
        Ignored when ``root`` is a Dataset.
    descriptors : sequence of str
        Descriptor specs (:func:`parse_descriptor`), e.g. ``["hsv", "hsv72"]``.
    metrics : sequence of str or None, optional
        Metrics to rank by; ``None`` (or a ``None`` entry) = each descriptor's default.
    reranks : sequence of str or None
        Re-ranking specs (:func:`fastimg.rerank.parse_spec`); ``None`` = the plain ranking.
    measures : sequence of str, optional
        Measures (:func:`parse_metric`); default per layout (:data:`DEFAULT_MEASURES`).
    depth : int, optional
        Length of the evaluated rankings; default: the whole database (exact mAP).
    workers : int, optional
        Threads for feature extraction.
    progress : bool
        Show progress bars during extraction.
    features : dict, optional
        Cache ``{descriptor spec: (matrix, errors)}``, read and filled in, so that
        repeated calls do not extract again.
    train_fraction : float, optional
        Held-out evaluation of metric learning: the described images are split
        (:func:`fastimg.learn.split_labels` with ``seed``) into a train part and a
        test part, each ``learn`` model is fitted on the train part's vectors and
        labels, and only the test part is evaluated - its queries ranking the test
        part alone (the layout's query rule kept: with ``"folders"`` every test
        image queries the other test images).  ``"image"`` split: this share of
        each class trains; ``"class"`` split: this share of the classes trains and
        the test classes are never seen in training.
    splits : sequence of {"image", "class"}, default ("image",)
        The splits to report (each one a set of rows).
    seed : int, default 0
        Seed of the splits.
    learn : sequence of str or None, optional
        What is fitted on the train part, as ``name`` or ``name:param=value,...``:
        ``"none"`` (the raw descriptor: the baseline on the same test part),
        ``"whiten"`` (unsupervised :class:`fastimg.projection.PCAWhitening`,
        parameters ``dim``, ``power``), ``"lda"`` / ``"nca"``
        (:func:`fastimg.learn_projection`, parameters ``dim`` and the method's
        options).  Default ``["none", "lda"]``.  Needs ``train_fraction``.  The
        fitted maps give signed vectors: their rows use the metrics asked for, or
        the cosine by default.

    Returns
    -------
    list of dict
        One row per combination: ``descriptor``, ``metric``, ``rerank`` (``"none"``),
        every measure, ``n_queries``, ``n_skipped`` (queries without relevant item),
        ``n_failed`` (images that could not be described: left out of queries and
        database), ``ms_per_query`` (search + re-ranking, wall clock) and, when the
        metric does not apply to the descriptor's values, ``error``.  With
        ``train_fraction``, also ``split``, ``learn`` (the spec, ``"none"`` for
        the raw descriptor), ``n_train`` and ``n_test`` (images in each part).
    """
    from fastimg.metrics import get_metric
    from fastimg.features.registry import describe_many, get_descriptor
    from fastimg.rerank import apply, parse_spec

    ds = root if isinstance(root, Dataset) else load_dataset(root, layout)
    meas = list(measures) if measures else list(DEFAULT_MEASURES[ds.layout])
    for mname in meas:
        parse_metric(mname)
    specs = [None if r in (None, "", "none") else parse_spec(r) for r in reranks]
    if depth is not None:
        depth = _check_k(depth, "depth")
    held_out = _held_out_plan(train_fraction, splits, seed, learn)
    cache = features if features is not None else {}
    rows: list = []
    for dspec in descriptors:
        dname, dparams = parse_descriptor(dspec)
        desc = get_descriptor(dname, **dparams)
        if dspec not in cache:
            cache[dspec] = describe_many([str(p) for p in ds.paths], desc, workers=workers, progress=progress)
        matrix, errors = cache[dspec]
        ok = np.all(np.isfinite(matrix), axis=1)
        db_ids = np.flatnonzero(ok)
        data = np.ascontiguousarray(matrix[db_ids], dtype=np.float32)
        remap = np.full(len(ds), -1, dtype=np.int64)
        remap[db_ids] = np.arange(db_ids.size)
        qids = remap[ds.queries]
        qids = qids[qids >= 0]
        labels = ds.labels[db_ids]
        mlist = list(metrics) if metrics else [None]
        n_failed = int(len(ds) - db_ids.size)
        if held_out is not None:
            rows.extend(_evaluate_held_out(ds, data, labels, qids, dspec, desc.default_metric, mlist, specs, meas,
                                           depth, held_out, n_failed=n_failed, apply=apply))
            continue
        for mspec in mlist:
            mname = desc.default_metric if mspec is None else get_metric(mspec).name
            rows.extend(_evaluate_one(ds, data, labels, qids, dspec, mname, specs, meas, depth,
                                      n_failed=n_failed, apply=apply))
    return rows


#: What :func:`evaluate` can fit on a train part besides :data:`fastimg.learn.METHODS` ("none": nothing).
LEARN_BASELINES = ("none", "whiten")


def _held_out_plan(train_fraction: Optional[float], splits: Sequence[str], seed: int,
                   learn: Optional[Sequence[Optional[str]]]) -> Optional[dict]:
    """The checked held-out arguments of :func:`evaluate` (None: no held-out evaluation)."""
    from fastimg.learn import METHODS

    if train_fraction is None:
        if learn is not None and any(spec not in (None, "", "none") for spec in learn):
            raise ArgumentError(f"learn={list(learn)} needs train_fraction (models are fitted on a train part and "
                             "evaluated on the held-out part)")
        return None
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float)) \
            or not 0.0 < float(train_fraction) < 1.0:
        raise ArgumentError(f"train_fraction must be a number strictly between 0 and 1; got {train_fraction!r}")
    if isinstance(splits, str) or not splits or any(s not in ("image", "class") for s in splits):
        raise ArgumentError(f"splits must be a non-empty list of 'image' and 'class'; got {splits!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ArgumentError(f"seed must be an int; got {seed!r}")
    models = []
    for spec in (["none", "lda"] if learn is None else list(learn)):
        name, params = parse_descriptor("none" if spec in (None, "") else spec, "learn spec")
        name = name.lower()
        if name not in (*LEARN_BASELINES, *METHODS):
            raise ArgumentError(f"unknown learn spec {spec!r}; expected one of {[*LEARN_BASELINES, *sorted(METHODS)]}")
        if name == "none" and params:
            raise ArgumentError(f"learn spec 'none' takes no parameters; got {spec!r}")
        models.append((str(spec or "none"), name, params))
    if not models:
        raise ArgumentError("learn must name at least one model (or 'none')")
    return {"fraction": float(train_fraction), "splits": list(dict.fromkeys(splits)), "seed": int(seed),
            "models": models}


def _fit_on_train(name: str, params: dict, x: np.ndarray, y: np.ndarray) -> Any:
    """A fitted map (``transform``) of ``name`` on the train part (``"none"``: None)."""
    if name == "none":
        return None
    if name == "whiten":
        from fastimg.projection import PCAWhitening

        return PCAWhitening(**params).fit(x)
    from fastimg.learn import learn_projection

    return learn_projection(x, y, method=name, **params)


def _evaluate_held_out(ds: Dataset, data: np.ndarray, labels: np.ndarray, qids: np.ndarray, dspec: str,
                       default_metric: str, mlist: list, specs: list, meas: list, depth: Optional[int], plan: dict,
                       *, n_failed: int, apply: Any) -> list:
    """Rows of every split x model x metric x re-ranking: fit on the train part, evaluate the test part."""
    from fastimg.errors import FastimgError
    from fastimg.learn import split_labels
    from fastimg.metrics import get_metric

    rows: list = []
    for by in plan["splits"]:
        train, test = split_labels(labels, plan["fraction"], by=by, seed=plan["seed"])
        pos = np.full(labels.shape[0], -1, dtype=np.int64)
        pos[test] = np.arange(test.size)
        q_test = pos[qids]
        q_test = q_test[q_test >= 0]
        x_train = np.asarray(data[train], dtype=np.float64)
        for spec, name, params in plan["models"]:
            base = {"split": by, "learn": spec, "n_train": int(train.size), "n_test": int(test.size)}
            try:
                model = _fit_on_train(name, params, x_train, labels[train])
            except (FastimgError, ValueError) as exc:
                rows.append({"descriptor": dspec, **base, "metric": "-", "rerank": "-", "n_failed": n_failed,
                             "error": f"{spec}: {exc}"})
                continue
            if model is None:
                part = np.ascontiguousarray(data[test], dtype=np.float32)
            else:
                part = np.ascontiguousarray(model.transform(data[test]), dtype=np.float32)
            for mspec in mlist:
                if mspec is None:
                    mname = default_metric if model is None else "cosine"
                else:
                    mname = get_metric(mspec).name
                for row in _evaluate_one(ds, part, labels[test], q_test, dspec, mname, specs, meas, depth,
                                         n_failed=n_failed, apply=apply):
                    rows.append({"descriptor": row.pop("descriptor"), **base, **row})
    return rows


def _evaluate_one(ds: Dataset, data: np.ndarray, labels: np.ndarray, qids: np.ndarray, dspec: str, mname: str,
                  specs: list, meas: list, depth: Optional[int], *, n_failed: int, apply: Any) -> list:
    import time

    from fastimg.search import ExactSearcher

    base = {"descriptor": dspec, "metric": mname, "n_failed": n_failed}
    n = data.shape[0]
    if n < 2 or qids.size == 0:
        raise DatasetError(f"{ds.root}: descriptor {dspec!r} described {n} image(s) ({n_failed} failed) and "
                         f"{qids.size} query image(s); need at least 2 images and 1 query")
    try:
        t0 = time.perf_counter()
        searcher = ExactSearcher(data, mname)
        excl = ds.exclude_query
        length = (n - 1 if excl else n) if depth is None else min(depth, n - 1 if excl else n)
        ids, scores = searcher.search(data[qids], length + (1 if excl else 0))
        t_base = time.perf_counter() - t0
        # re-ranking callbacks search a few rows at a time: one thread avoids
        # oversubscribing a busy machine (same prepared matrix, no copy)
        searcher1 = ExactSearcher(data, mname, prepared=searcher.prepared, bias=searcher.bias, threads=1,
                                  check=False)  # the same data, checked by `searcher` above
    except ValueError as exc:
        return [{**base, "rerank": str(s) if s else "none", "error": str(exc)} for s in specs]
    if excl:  # drop each query from its own ranking (ExactSearcher's exclude is global)
        keep = ids != qids[:, None]
        first = np.argmin(keep, axis=1)  # position of the query (or 0 when absent)
        absent = keep.all(axis=1)
        drop = np.where(absent, ids.shape[1] - 1, first)
        mask = np.ones(ids.shape, dtype=bool)
        mask[np.arange(ids.shape[0]), drop] = False
        ids = ids[mask].reshape(ids.shape[0], -1)
        scores = scores[mask].reshape(ids.shape[0], -1)
    out = []
    for spec in specs:
        row = {**base, "rerank": str(spec) if spec else "none"}
        if spec is None:
            ranked, secs = ids, t_base
        else:
            t0 = time.perf_counter()
            ranked = np.full(ids.shape, -1, dtype=np.int64)
            for r, qid in enumerate(qids):
                ex = [int(qid)] if excl else None

                def search(v: np.ndarray, k: int, _ex: Any = ex) -> tuple:
                    return searcher1.search(v, k, exclude=_ex)

                new_ids, _ = apply(spec, data[qid], ids[r], scores[r], get_vectors=lambda i: data[i],
                                   search=search, k=ids.shape[1], metric=mname)
                ranked[r, :new_ids.shape[0]] = new_ids
            secs = t_base + (time.perf_counter() - t0)
        res = evaluate_ranking(ranked, labels, qids, exclude_query=excl, metrics=meas)
        row.update(res)
        row["ms_per_query"] = 1000.0 * secs / max(len(qids), 1)
        out.append(row)
    return out


def format_table(rows: Sequence[dict], measures: Optional[Sequence[str]] = None) -> str:
    """Plain-text table of :func:`evaluate` rows (one line per combination)."""
    if not rows:
        return "(no results)"
    keys = [k for k in ("descriptor", "split", "learn", "metric", "rerank") if k in rows[0]]
    if measures is None:
        skip = {*keys, "n_queries", "n_skipped", "n_failed", "ms_per_query", "error", "n_train", "n_test"}
        measures = [k for k in rows[0] if k not in skip]
    head = [*keys, *measures, "ms/query"]
    body = []
    for r in rows:
        if "error" in r:
            body.append([*(r.get(k, "-") for k in keys), f"error: {r['error']}"])
            continue
        body.append([*(r[k] for k in keys), *(f"{r[m]:.4f}" if m in r else "-" for m in measures),
                     f"{r['ms_per_query']:.2f}"])
    widths = [max(len(str(x[i])) for x in [head, *body] if i < len(x)) for i in range(len(head))]
    nk = len(keys)
    lines = ["  ".join(str(v).ljust(widths[i]) if i < nk else str(v).rjust(widths[i]) for i, v in enumerate(line))
             for line in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(x.rstrip() for x in lines)
