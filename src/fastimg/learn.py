"""Metric learning: a linear projection learned from labelled vectors.

"Similar" then means what the user's labels say: vectors of one class are
brought together and vectors of different classes pushed apart, on top of any
descriptor, with NumPy (and SciPy's L-BFGS for NCA) - no deep-learning
framework.  The result is a :class:`fastimg.projection.LinearProjection`::

    transform(x) = l2_normalize((x - mean) @ matrix.T)

searched with the cosine (or L2: on unit vectors they rank alike).  The final
L2 normalisation is the default because it measured better than the raw
projected vectors with the L2 distance for every method and descriptor tried
while developing this module (Corel-1k, held-out half, one split: LDA
0.801 vs 0.786 mAP for ``classic``, 0.951 vs 0.942 for ``cnn-crow``; NCA
0.637 vs 0.618 and 0.939 vs 0.935); ``normalize=False`` keeps them raw.

Methods (:data:`METHODS`):

``"lda"`` - supervised whitening / linear discriminant analysis (closed form).
    Solves ``St v = lambda Sw v`` for the total scatter ``St`` and the
    within-class scatter ``Sw``, both shrunk towards a multiple of the
    identity (``S -> (1 - shrinkage) S + shrinkage * trace(S) / D * I``, as
    scikit-learn's ``LinearDiscriminantAnalysis(solver="eigen",
    shrinkage=...)``: the same directions and scales).  The rows of the matrix
    are the eigenvectors by decreasing ``lambda``, scaled to unit (shrunk)
    within-class variance.

    The first ``n_classes - 1`` rows are classical LDA, the default
    (``dim=None``): the best choice when the searched images belong to the
    labelled classes (Corel-1k, held-out images of the training classes: mAP
    0.807 for ``classic``, 0.956 for ``cnn-crow``, against 0.627 and 0.884
    with every row, and 0.569 and 0.895 for PCA-whitening).  The remaining
    rows whiten what is left with the within-class covariance (a Mahalanobis
    metric); that is what carries over to classes never seen in training
    (held-out classes: 0.656 and 0.919 with every row, against 0.481 and
    0.486 with ``n_classes - 1``).  So pass ``dim=D`` (a large shrinkage,
    0.9, was chosen on validation there) when the labels cover only some of
    the classes that will be searched.  Figures: ``bench/quality.md``
    (3 splits; every tuned choice made on validation splits inside the
    training part).

    Shrinkage makes ``Sw`` invertible when ``D >= n`` or when it is singular;
    the default, 0.5, gives the figures above (validation inside the training
    part chose 0.5 to 0.9 on held-out images); ``shrinkage=0`` needs a
    non-singular ``Sw``.
    Shrinking towards ``trace / D * I`` assumes coordinates of comparable
    scale (true of L2-normalised descriptors); standardise them first, or use
    a small shrinkage, when a few coordinates have a much larger variance.

``"nca"`` - Neighbourhood Components Analysis (Goldberger et al. 2004).
    Maximises the expected leave-one-out accuracy of a soft nearest-neighbour
    classifier in the projected space, ``mean_i sum_{j in class(i)} p_ij``
    with ``p_ij = softmax_j(-||A x_i - A x_j||^2)`` (scikit-learn's
    ``NeighborhoodComponentsAnalysis`` objective divided by ``n``; see
    :func:`nca_objective`), by SciPy's L-BFGS with the analytic gradient.
    Started from the LDA map (``init="lda"``, default) or the principal axes
    (``"pca"``), rescaled so that the median squared distance of a training
    vector to its nearest neighbour is 1 (an unscaled start saturates the
    softmax - every ``p_ij`` 0 or 1 - and the optimiser does not move).  Cost
    per iteration O(n^2 d + n d D): above ``max_samples`` labelled vectors it
    is fitted on a class-stratified random sample.  With few examples per
    dimension (Corel-1k: 500 training vectors of 707 or 1024 dimensions) the
    training objective is nearly 1 from the LDA start, and NCA adds nothing
    measurable on held-out images (mAP 0.775 against LDA's 0.807 for
    ``classic``, 0.955 against 0.953 for ``cnn-crow``) while it overfits the
    training classes (held-out classes: 0.617 and 0.795, below PCA-whitening's
    0.663 and 0.918).  It is offered for larger labelled sets and as a
    reference; LDA is the method to use on small ones.

Labels: one hashable value per vector (str, int, tuple...).  ``None`` and
float NaN mean "unlabelled": those rows are ignored, as are vector rows that
hold NaN (images that failed in :func:`fastimg.describe_many`).  A class with
a single example cannot contribute a within-class pair, but is kept: it still
counts in the total scatter (LDA) and as a different-class neighbour (NCA).
At least two classes and one class with two examples are needed.

Honest evaluation: :func:`split_labels` splits a labelled collection into
train/test ids by image (stratified per class) or by class (held-out classes),
with a fixed seed.

All errors are :class:`fastimg.DescriptorError` (a ``ValueError``), naming the
argument, what was expected and what was found.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Hashable, Optional, Sequence

import numpy as np

from fastimg.errors import DescriptorError
from fastimg.projection import LinearProjection

__all__ = ["METHODS", "learn_projection", "nca_objective", "split_labels", "encode_labels", "read_labels"]

#: Learning methods and their options with defaults (besides ``dim`` and ``normalize``).
METHODS: dict = {
    "lda": {"shrinkage": 0.5},
    "nca": {"init": "lda", "shrinkage": 0.5, "max_iter": 100, "tol": 1e-5, "max_samples": 2000, "seed": 0},
}

_NCA_INITS = ("lda", "pca", "identity")


# --------------------------------------------------------------------------- labels
def encode_labels(labels: Sequence[Hashable], n: Optional[int] = None) -> tuple[np.ndarray, list]:
    """Integer codes of hashable labels, in order of first appearance.

    Parameters
    ----------
    labels : sequence of hashable
        One label per item.  ``None`` and float NaN mean "unlabelled".
    n : int, optional
        Expected number of labels (the number of vectors).

    Returns
    -------
    codes : numpy.ndarray of int64, shape (n,)
        ``codes[i]`` indexes ``classes``; -1 for unlabelled items.
    classes : list
        The distinct labels, in order of first appearance.

    Raises
    ------
    DescriptorError
        If ``labels`` is not a 1-D sequence, has the wrong length, or holds an
        unhashable value.
    """
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1:
            raise DescriptorError(f"labels must be 1-D (one label per vector); got an array of shape {labels.shape}")
        items = labels.tolist()
    elif isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__"):
        raise DescriptorError(f"labels must be a sequence with one label per vector; got {type(labels).__name__}")
    else:
        items = list(labels)
    if n is not None and len(items) != n:
        raise DescriptorError(f"labels: expected one label per vector ({n}); got {len(items)}")
    index: dict = {}
    classes: list = []
    codes = np.empty(len(items), dtype=np.int64)
    for i, lab in enumerate(items):
        if lab is None or (isinstance(lab, (float, np.floating)) and math.isnan(lab)):
            codes[i] = -1
            continue
        try:
            c = index.get(lab)
        except TypeError:
            raise DescriptorError(f"labels[{i}] = {lab!r} is not hashable; labels must be str, int, tuple ...") from None
        if c is None:
            c = index[lab] = len(classes)
            classes.append(lab)
        codes[i] = c
    return codes, classes


_HEADER = ({"path", "file", "filename", "image", "name"}, {"label", "group", "class", "category"})


def read_labels(source: Any) -> tuple[list[tuple[Any, Hashable]], Optional[Path]]:
    """Labelled items from a mapping, a CSV file or a folder-per-class directory.

    Parameters
    ----------
    source : mapping, str or os.PathLike
        * a mapping ``{item: label}`` (items: paths, names or ids, as the
          caller's lookup takes them);
        * a CSV file of rows ``path,label`` (an optional header row such as
          ``path,label`` or ``file,group``; blank rows and rows starting with
          ``#`` are skipped; an empty label means unlabelled);
        * a directory in the ``folders`` layout of :func:`fastimg.eval.load_dataset`
          (one sub-directory per class; its name is the label).

    Returns
    -------
    pairs : list of (item, label)
        In file order; labels of a CSV are ``str``.
    base : Path or None
        The CSV file's directory, which relative paths of the file may be
        relative to (None for a mapping or a directory).

    Raises
    ------
    ArgumentError
        An unreadable or malformed source, naming it (and the line of a CSV).
    """
    from fastimg.errors import ArgumentError

    if isinstance(source, Mapping):
        return list(source.items()), None
    if not isinstance(source, (str, os.PathLike)):
        raise ArgumentError(f"labels must be a mapping {{path: label}}, a CSV file 'path,label' or a directory "
                            f"with one sub-directory per class; got {type(source).__name__}")
    p = Path(source).expanduser()
    if p.is_dir():
        from fastimg.eval import load_dataset

        try:
            ds = load_dataset(p, "folders")
        except ValueError as exc:
            raise ArgumentError(f"labels: {exc}") from None
        return [(str(q), ds.class_names[int(c)]) for q, c in zip(ds.paths, ds.labels)], None
    import csv

    pairs: list = []
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            for line, row in enumerate(csv.reader(fh), 1):
                cells = [c.strip() for c in row]
                if not any(cells) or cells[0].startswith("#"):
                    continue
                if not pairs and len(cells) >= 2 and cells[0].lower() in _HEADER[0] \
                        and cells[1].lower() in _HEADER[1]:
                    continue
                if len(cells) < 2 or not cells[0]:
                    raise ArgumentError(f"{p}:{line}: expected 'path,label'; got {','.join(row)!r}")
                pairs.append((cells[0], cells[1] or None))
    except FileNotFoundError:
        raise ArgumentError(f"labels: no such file or directory: {p}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ArgumentError(f"{p}: cannot read the labels file ({exc})") from None
    if not pairs:
        raise ArgumentError(f"{p}: no 'path,label' row in the labels file")
    return pairs, p.parent


def _training_set(vectors: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, dict]:
    """Usable rows (finite vectors with a label), their class codes 0..C-1, and counts."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise DescriptorError(f"vectors must be a non-empty matrix of shape (n, D); got shape {x.shape}")
    codes, _ = encode_labels(labels, x.shape[0])
    nan_rows = np.isnan(x).any(axis=1)
    bad = ~nan_rows & ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise DescriptorError(f"vectors: row {int(np.flatnonzero(bad)[0])} holds infinite values "
                              f"({int(bad.sum())} such rows)")
    keep = ~nan_rows & (codes >= 0)
    info = {"n_nan_rows": int(nan_rows.sum()), "n_unlabelled": int(((codes < 0) & ~nan_rows).sum())}
    x, codes = x[keep], codes[keep]
    # renumber the classes that remain 0..C-1
    uniq, codes = np.unique(codes, return_inverse=True)
    counts = np.bincount(codes, minlength=uniq.size)
    info.update(n=int(x.shape[0]), n_classes=int(uniq.size), n_singletons=int((counts == 1).sum()))
    if uniq.size < 2:
        raise DescriptorError(f"learning a projection needs labelled vectors of at least 2 classes; got "
                              f"{uniq.size} class(es) among {x.shape[0]} usable rows "
                              f"({info['n_nan_rows']} NaN rows and {info['n_unlabelled']} unlabelled rows ignored)")
    if counts.max() < 2:
        raise DescriptorError(f"learning a projection needs at least one class with 2 or more examples; every "
                              f"one of the {uniq.size} classes has a single example")
    return x, codes.astype(np.int64), info


# --------------------------------------------------------------------------- options
def _check_options(method: str, options: dict) -> dict:
    if method not in METHODS:
        raise DescriptorError(f"unknown projection method {method!r}; expected one of {sorted(METHODS)}")
    allowed = METHODS[method]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DescriptorError(f"method {method!r} takes the options {sorted(allowed)}; got unknown {unknown}")
    opts = {**allowed, **options}
    s = opts.get("shrinkage")
    if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float, np.floating, np.integer))
                          or not 0.0 <= float(s) <= 1.0):
        raise DescriptorError(f"shrinkage must be a number in [0, 1]; got {s!r}")
    if method == "nca":
        init = opts["init"]
        if isinstance(init, str):
            if init not in _NCA_INITS:
                raise DescriptorError(f"nca init must be one of {list(_NCA_INITS)} or a (dim, D) array; got {init!r}")
        for name, lo in (("max_iter", 1), ("max_samples", 3)):
            v = opts[name]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise DescriptorError(f"nca {name} must be an int >= {lo}; got {v!r}")
        t = opts["tol"]
        if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)) \
                or not (t > 0 and math.isfinite(t)):
            raise DescriptorError(f"nca tol must be a finite number > 0; got {t!r}")
        if isinstance(opts["seed"], bool) or not isinstance(opts["seed"], (int, np.integer)):
            raise DescriptorError(f"nca seed must be an int; got {opts['seed']!r}")
    return opts


def _check_dim(dim: Any, limit: int, what: str) -> int:
    if dim is None:
        return limit
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise DescriptorError(f"dim must be a positive int or None; got {dim!r}")
    if dim > limit:
        raise DescriptorError(f"dim={dim} is larger than {what} ({limit})")
    return int(dim)


# --------------------------------------------------------------------------- LDA
def _shrunk(s: np.ndarray, shrinkage: float) -> np.ndarray:
    d = s.shape[0]
    out = (1.0 - shrinkage) * s
    out[np.diag_indices(d)] += shrinkage * np.trace(s) / d
    return out


def _lda(x: np.ndarray, codes: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, matrix rows by decreasing ratio, ratios) of the shrunk St / Sw eigenproblem."""
    n, d = x.shape
    mean = x.mean(axis=0)
    xc = x - mean
    st = xc.T @ xc / n
    means = np.zeros((int(codes.max()) + 1, d))
    np.add.at(means, codes, x)
    means /= np.bincount(codes)[:, None]
    xw = x - means[codes]
    sw = xw.T @ xw / n
    sw_r, st_r = _shrunk(sw, shrinkage), _shrunk(st, shrinkage)
    # Sw_r = L L^T; the eigenvectors u of L^-1 St_r L^-T give rows u^T L^-1 with r Sw_r r^T = 1
    # (one symmetric eigendecomposition: the D x D eigh is the cost of the fit)
    try:
        low = np.linalg.cholesky(sw_r)
        piv = np.diag(low) ** 2
        singular = not (piv.min() > piv.max() * 1e-10)
    except np.linalg.LinAlgError:
        singular = True
    if singular:
        raise DescriptorError(
            f"lda: the within-class scatter is singular ({n} usable vectors of dimension {d} in "
            f"{means.shape[0]} classes); use shrinkage > 0 (got {shrinkage})"
        )
    linv = np.linalg.inv(low)
    m = linv @ st_r @ linv.T
    ratios, u = np.linalg.eigh((m + m.T) / 2)
    order = np.argsort(ratios)[::-1]
    ratios, u = ratios[order], u[:, order]
    rows = u.T @ linv
    return mean, _fix_signs(rows), ratios


def _fix_signs(rows: np.ndarray) -> np.ndarray:
    """Deterministic signs: the largest-magnitude coordinate of each row is positive."""
    idx = np.argmax(np.abs(rows), axis=1)
    s = np.sign(rows[np.arange(rows.shape[0]), idx])
    s[s == 0] = 1.0
    return rows * s[:, None]


# --------------------------------------------------------------------------- NCA
def _nca_loss_grad(flat: np.ndarray, x: np.ndarray, same: np.ndarray, dim: int) -> tuple[float, np.ndarray]:
    """Minus the NCA objective (mean over rows) and its gradient w.r.t. the flattened (dim, D) matrix."""
    n = x.shape[0]
    a = flat.reshape(dim, x.shape[1])
    e = x @ a.T
    sq = np.einsum("ij,ij->i", e, e)
    dist = sq[:, None] + sq[None, :] - 2.0 * (e @ e.T)
    np.fill_diagonal(dist, np.inf)
    dist -= dist.min(axis=1, keepdims=True)  # stable softmax over each row
    p = np.exp(-dist)
    p /= p.sum(axis=1, keepdims=True)
    pm = np.where(same, p, 0.0)
    pi = pm.sum(axis=1, keepdims=True)
    wgt = pm - p * pi
    sym = wgt + wgt.T
    np.fill_diagonal(sym, -wgt.sum(axis=0))
    grad = 2.0 * ((e.T @ sym) @ x)
    return -float(pi.sum()) / n, -grad.ravel() / n


def nca_objective(matrix: Any, vectors: Any, labels: Any) -> tuple[float, np.ndarray]:
    """NCA objective and its gradient at a given matrix.

    ``f(A) = mean_i sum_{j != i, label_j = label_i} p_ij`` with
    ``p_ij = exp(-||A x_i - A x_j||^2) / sum_{k != i} exp(-||A x_i - A x_k||^2)``:
    the expected leave-one-out accuracy of the stochastic nearest-neighbour
    rule (in [0, 1]; scikit-learn's NCA maximises ``n * f``).  NaN and
    unlabelled rows are ignored, as in :func:`learn_projection`.

    Parameters
    ----------
    matrix : array_like, shape (d, D)
    vectors : array_like, shape (n, D)
    labels : sequence of hashable, length n

    Returns
    -------
    value : float
    gradient : numpy.ndarray of float64, shape (d, D)
        ``df/dA``.
    """
    x, codes, _ = _training_set(vectors, labels)
    a = np.asarray(matrix, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != x.shape[1] or a.shape[0] == 0:
        raise DescriptorError(f"nca: matrix must have shape (d, {x.shape[1]}); got {a.shape}")
    f, g = _nca_loss_grad(a.ravel(), x - x.mean(axis=0), codes[:, None] == codes[None, :], a.shape[0])
    return -f, -g.reshape(a.shape)


def _stratified_sample(codes: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """About ``size`` row ids, each class in proportion (at least 2 of those that have 2)."""
    n = codes.shape[0]
    counts = np.bincount(codes)
    take = np.minimum(counts, np.maximum(np.minimum(counts, 2), np.floor(counts * size / n).astype(np.int64)))
    out = [rng.choice(np.flatnonzero(codes == c), size=int(k), replace=False) for c, k in enumerate(take) if k]
    return np.sort(np.concatenate(out))


def _nca(x: np.ndarray, codes: np.ndarray, dim: int, opts: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    from scipy.optimize import minimize  # the 'learn' extra; imported here to keep `import fastimg` light

    rng = np.random.default_rng(int(opts["seed"]))
    if x.shape[0] > int(opts["max_samples"]):
        rows = _stratified_sample(codes, int(opts["max_samples"]), rng)
        x, codes = x[rows], codes[rows]
    mean = x.mean(axis=0)
    xc = x - mean
    init = opts["init"]
    if isinstance(init, str):
        if init == "lda":
            a0 = _lda(x, codes, float(opts["shrinkage"]))[1][:dim]
        elif init == "pca":
            _, _, vt = np.linalg.svd(xc, full_matrices=False)
            if dim > vt.shape[0]:
                raise DescriptorError(f"nca init 'pca' gives at most {vt.shape[0]} axes (min(n, D)); got dim={dim}")
            a0 = vt[:dim]
        else:
            a0 = np.eye(dim, x.shape[1])
        e = xc @ a0.T
        sq = np.einsum("ij,ij->i", e, e)
        dist = sq[:, None] + sq[None, :] - 2.0 * (e @ e.T)
        np.fill_diagonal(dist, np.inf)
        nn = float(np.median(np.maximum(dist.min(axis=1), 0.0)))
        if nn > 0 and math.isfinite(nn):
            a0 = a0 / math.sqrt(nn)
    else:
        a0 = np.array(init, dtype=np.float64)
        if a0.shape != (dim, x.shape[1]) or not np.isfinite(a0).all():
            raise DescriptorError(f"nca init array must be finite with shape (dim, D) = ({dim}, {x.shape[1]}); "
                                  f"got {a0.shape}")
    same = codes[:, None] == codes[None, :]
    f0 = -_nca_loss_grad(a0.ravel(), xc, same, dim)[0]
    res = minimize(_nca_loss_grad, a0.ravel(), args=(xc, same, dim), jac=True, method="L-BFGS-B",
                   tol=float(opts["tol"]), options={"maxiter": int(opts["max_iter"])})
    a = res.x.reshape(dim, x.shape[1])
    info = {"n_fit": int(x.shape[0]), "objective_init": round(f0, 6), "objective": round(-float(res.fun), 6),
            "iterations": int(res.nit)}
    return mean, a, info


# --------------------------------------------------------------------------- API
def learn_projection(vectors: Any, labels: Any, *, method: str = "lda", dim: Optional[int] = None,
                     normalize: bool = True, **options: Any) -> LinearProjection:
    """Learn a linear projection from labelled vectors (metric learning).

    Parameters
    ----------
    vectors : array_like, shape (n, D)
        Descriptors as they will be searched (e.g. the rows of an index).  Rows
        holding NaN are ignored.
    labels : sequence of hashable, length n
        Class (group) of each vector; ``None`` / NaN = unlabelled (ignored).
    method : {"lda", "nca"}, default "lda"
        See the module documentation.
    dim : int, optional
        Output dimension.  ``lda``: default ``min(n_classes - 1, D)``
        (classical LDA; up to ``D``: see the module documentation for when to
        keep every direction).  ``nca``: default ``min(D, 64)``.
    normalize : bool, default True
        L2-normalise the projected vectors (search them with the cosine).
    **options
        ``lda``: ``shrinkage`` (0.5).  ``nca``: ``init`` ("lda", "pca",
        "identity" or a (dim, D) array), ``shrinkage`` (0.5, of the LDA start),
        ``max_iter`` (100), ``tol`` (1e-5), ``max_samples`` (2000), ``seed`` (0,
        for the sample).  Defaults in :data:`METHODS`.

    Returns
    -------
    LinearProjection
        ``method``, the options used and fit statistics in ``params``
        (``n_classes``, ``n_nan_rows``, ``n_unlabelled``, ``n_singletons``,
        ``seconds``; for NCA the objective before and after, ``iterations``).

    Raises
    ------
    DescriptorError
        Bad vectors, labels, method, dim or options; fewer than 2 classes or
        no class with 2 examples; a singular within-class scatter with
        ``shrinkage=0``.

    Examples
    --------
    >>> x, errors = fastimg.describe_many(paths, "cnn-crow")      # doctest: +SKIP
    >>> p = fastimg.learn_projection(x, folder_names)             # doctest: +SKIP
    >>> q = p.transform(x)   # search q with the cosine            # doctest: +SKIP
    """
    if not isinstance(method, str):
        raise DescriptorError(f"projection method must be a str; got {method!r}")
    method = method.strip().lower()
    opts = _check_options(method, options)
    t0 = time.perf_counter()
    x, codes, info = _training_set(vectors, labels)
    d = x.shape[1]
    if method == "lda":
        out = _check_dim(min(info["n_classes"] - 1, d) if dim is None else dim, d, "the vectors' dimension D")
        mean, rows, _ = _lda(x, codes, float(opts["shrinkage"]))
        matrix = rows[:out]
        info["n_fit"] = info["n"]
    else:
        out = _check_dim(min(d, 64) if dim is None else dim, d, "the vectors' dimension D")
        init = opts["init"]
        if not isinstance(init, str):
            opts["init"] = "array"  # recorded by name only
        mean, matrix, fit = _nca(x, codes, out, {**opts, "init": init})
        info.update(fit)
    plain = {k: (float(v) if k in ("shrinkage", "tol") else int(v) if isinstance(v, (int, np.integer)) else v)
             for k, v in opts.items()}  # JSON-serialisable (numpy scalars are accepted as options)
    params = {**plain, "dim": out, **info,
              "seconds": round(time.perf_counter() - t0, 3)}
    n_fit = params.pop("n_fit")
    params.pop("n")
    return LinearProjection(mean, matrix, method=method, params=params, normalize=normalize, n_fit=n_fit)


def split_labels(labels: Any, train_fraction: float = 0.5, *, by: str = "image",
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split a labelled collection into train and test ids (held-out evaluation).

    Parameters
    ----------
    labels : sequence of hashable, length n
        Class (group) of each item; ``None`` / NaN = unlabelled: in neither part.
    train_fraction : float, default 0.5
        In (0, 1).  ``by="image"``: the share of each class's items that go to
        train, ``round(fraction * count)`` clipped so that every class with 2 or
        more items has at least one item in each part (a class of one item goes
        to train: alone in test it would have nothing to find).
        ``by="class"``: the share of the classes that go to train,
        ``round(fraction * n_classes)`` clipped to [1, n_classes - 1].
    by : {"image", "class"}, default "image"
        ``"image"``: stratified per class, every class in both parts.
        ``"class"``: whole classes held out (test classes are never seen in
        training).
    seed : int, default 0
        Seed of the random permutation (the same labels and seed give the same
        split).

    Returns
    -------
    train, test : numpy.ndarray of int64
        Sorted, disjoint item ids.

    Raises
    ------
    DescriptorError
        Bad ``train_fraction``, ``by`` or labels; ``by="class"`` with fewer
        than 2 classes.
    """
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float, np.floating)) \
            or not 0.0 < float(train_fraction) < 1.0:
        raise DescriptorError(f"train_fraction must be a number strictly between 0 and 1; got {train_fraction!r}")
    if by not in ("image", "class"):
        raise DescriptorError(f"split by must be 'image' or 'class'; got {by!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DescriptorError(f"split seed must be an int; got {seed!r}")
    codes, classes = encode_labels(labels)
    rng = np.random.default_rng(int(seed))
    f = float(train_fraction)
    train = np.zeros(codes.shape[0], dtype=bool)
    if by == "class":
        c = len(classes)
        if c < 2:
            raise DescriptorError(f"a split by class needs at least 2 classes; got {c}")
        k = min(max(int(round(f * c)), 1), c - 1)
        chosen = rng.permutation(c)[:k]
        train = np.isin(codes, chosen)
    else:
        for c in range(len(classes)):
            ids = np.flatnonzero(codes == c)
            k = int(round(f * ids.size))
            k = ids.size if ids.size == 1 else min(max(k, 1), ids.size - 1)
            train[rng.permutation(ids)[:k]] = True
    labelled = codes >= 0
    return np.flatnonzero(train & labelled).astype(np.int64), np.flatnonzero(~train & labelled).astype(np.int64)
