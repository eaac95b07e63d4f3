"""Near-duplicate images in an index: candidate pairs verified on the images (or a score threshold), grouped.

>>> from fastimg.dedup import find_duplicates          # doctest: +SKIP
>>> with fastimg.Index.open("photos.fastimg") as index:  # doctest: +SKIP
...     for group in find_duplicates(index):
...         print(group.paths)

Two rules decide which pairs are duplicates; groups are the connected
components of the duplicate pairs (A~B and B~C put A, B and C in one group).

* ``verify="orb"`` (the default when no ``threshold`` is given,
  :func:`verified_pairs`): candidates are each image's ``candidates`` nearest
  neighbours in the index plus the pairs whose 64-bit DCT hashes differ in at
  most ``hash_bits`` bits; a candidate is a duplicate when at least
  ``min_inliers`` ORB matches fit one similarity transform (RANSAC) and, with
  ``same_photo=True`` (the default), the two images agree pixel by pixel under
  it (:func:`photometric_agreement` >= ``min_agreement``): copies of one photo,
  not two shots of one scene.  It reads the image files again.  Held out on
  Corel-1k copies (resize, JPEG q30, crop, brightness, rotation) it finds 0.997
  of them at precision 1.000, bursts of one scene in Corel-1k counted as false,
  whatever the index's descriptor (bench/quality.md,
  ``bench/dedup_calibrate.py --verify``).  ``same_photo=False`` groups those
  bursts too (inliers alone).
* ``verify="none"`` (the default with a ``threshold``): every live row is
  searched against the whole index (``Index.search_batch``, ``batch`` rows at a
  time), and a pair is a duplicate when its score is within the threshold in the
  metric's own direction (``score >= T`` for similarities, ``score <= T`` for
  distances).  No file is read; the calibrated per-descriptor thresholds find
  0.14-0.82 of those copies (each descriptor is blind to one kind of edit).

The score rule in detail:

A row starts with ``k`` neighbours; while its ``k``-th neighbour is still a
duplicate it is searched again with ``4 k``, so no pair is missed whatever the
size of a group (exact mode).  For an asymmetric metric (chisqr, kl_div) a pair
counts when either direction is within the threshold; its score is the one with
the lower id as the query when both directions are within it.

Default thresholds (:data:`THRESHOLDS`, :func:`default_threshold`) are per
built-in descriptor, for its default metric, calibrated on a generated
near-duplicate set by ``bench/dedup_calibrate.py`` (held-out recall and
precision of each in bench/quality.md).  A score's scale depends on the
descriptor, so a custom index, another metric, other descriptor parameters or a
PCA-whitened index have no default: pass ``threshold=``.

Only the public ``Index`` API is used (``vectors``, ``live_ids``,
``search_batch``, ``paths``, ``metric``, ``descriptor_spec``,
``whitening_path``), so any object offering it works.
``Index.duplicates(...)`` calls :func:`find_duplicates`.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Union

from fastimg.errors import FastimgError

__all__ = [
    "DuplicateGroup",
    "DuplicatePair",
    "DedupError",
    "THRESHOLDS",
    "default_threshold",
    "find_duplicates",
    "duplicate_pairs",
    "connected_groups",
    "verified_pairs",
    "ImageSignature",
    "image_signature",
    "match_transform",
    "match_inliers",
    "photometric_agreement",
    "verify_pair",
    "hash_pairs",
    "VERIFY_MIN_INLIERS",
    "VERIFY_MIN_AGREEMENT",
    "VERIFY_MIN_INLIERS_SCENE",
    "VERIFY_CANDIDATES",
    "VERIFY_HASH_BITS",
]

#: Default duplicate threshold per built-in descriptor and metric: ``(descriptor, metric) ->
#: threshold`` in the metric's own direction.  Calibrated by ``bench/dedup_calibrate.py`` on a
#: generated near-duplicate set (Corel-1k images with a 50 % resize, JPEG q30, 90 % crop, ±20 %
#: brightness and 3-5° rotation of each): precision first, the best F1 among the thresholds with
#: precision >= 0.99 on half of the images.  No descriptor reaches recall 0.95 there: held out, the
#: defaults find 0.14-0.82 of the copies at precision 0.97-1.00 (each descriptor misses one kind of
#: edit; table in bench/quality.md).  One entry per descriptor, for its default metric.  These are
#: the score rule's defaults (``verify="none"``); the verified default (``verify="orb"``) meets the target.
THRESHOLDS: dict[tuple[str, str], float] = {
    ("hsv72", "bhattacharyya"): 0.08737,
    ("rgb64", "bhattacharyya"): 0.05844,
    ("rgb512", "bhattacharyya"): 0.1138,
    ("hsv", "bhattacharyya"): 0.1209,
    ("spatial-hsv72", "bhattacharyya"): 0.1446,
    ("spatial-hsv", "bhattacharyya"): 0.1932,
    ("correlogram", "l1"): 7.57,
    ("lbp", "chisqr_alt"): 0.00196,
    ("ehd", "l1"): 1.2291666,
    ("cedd", "bhattacharyya"): 0.0873,
    ("classic", "l1"): 0.1892,
    ("classic-fast", "l1"): 0.1252,
    ("cnn-crow", "cosine"): 0.96352,
}
#: The descriptor each entry was calibrated with: ``name -> (version, digest of its params)``
#: (:func:`_params_digest`); an index whose descriptor differs gets no default.
_CALIBRATED = {
    "hsv72": (2, "b4b8bf78e9ad"),
    "rgb64": (1, "b4b8bf78e9ad"),
    "rgb512": (1, "b4b8bf78e9ad"),
    "hsv": (1, "27debd80716a"),
    "spatial-hsv72": (2, "94aac02398fa"),
    "spatial-hsv": (1, "1696c0f8aad4"),
    "correlogram": (2, "417c96e8dd7c"),
    "lbp": (1, "10fda24ab150"),
    "ehd": (1, "6e6071bc75ca"),
    "cedd": (1, "296b3913daf1"),
    "classic": (4, "b4b8bf78e9ad"),
    "classic-fast": (2, "b4b8bf78e9ad"),
    "cnn-crow": (1, "c794b822f09a"),
}

#: ``verify="orb"`` parameters (calibrated by ``bench/dedup_calibrate.py``, held-out figures in
#: bench/quality.md): every image is shrunk or enlarged to this longer side (grey) ...
VERIFY_SIDE = 320
#: ... and described by at most this many ORB keypoints;
VERIFY_FEATURES = 500
#: a candidate pair is a duplicate when a similarity transform (rotation, scale, shift: RANSAC,
#: ``cv2.estimateAffinePartial2D``) maps at least this many of its ratio-test ORB matches
#: (``same_photo=True``, with the agreement below) ...
VERIFY_MIN_INLIERS = 29
#: ... or this many (``same_photo=False``: inliers alone; bursts of one scene are grouped too).
VERIFY_MIN_INLIERS_SCENE = 35
#: candidates: each image's nearest neighbours in the index (this many) ...
VERIFY_CANDIDATES = 8
#: ... and every pair whose 64-bit DCT hashes differ in at most this many bits.
VERIFY_HASH_BITS = 14
#: ``same_photo=True`` (the default): a verified pair is also a duplicate only when the
#: photometric agreement (:func:`photometric_agreement`: zero-mean normalised cross-correlation of
#: the two grey thumbnails over their overlap, one warped onto the other by the fitted transform)
#: is at least this.  An edited copy agrees almost everywhere; a second exposure of the same
#: scene (a burst) differs where things moved and by parallax.
VERIFY_MIN_AGREEMENT = 0.977
#: the agreement's thumbnails: the grey image at this longer side (kept in the signature: 96 x 64 = 6 KB for a 3:2 photo)
VERIFY_THUMB_SIDE = 96
_BLUR = 1.0         # Gaussian sigma (thumbnail pixels) before the agreement: JPEG noise, resampling
_MIN_OVERLAP = 0.1  # an overlap under this share of the thumbnail agrees 0.0 (too little to judge)
_RATIO = 0.8        # Lowe's ratio test
_REPROJ = 4.0       # RANSAC inlier distance, pixels at VERIFY_SIDE
_RANSAC_ITERS = 500
_SCALES = (1 / 3, 3.0)  # plausible scales between two copies, both resized to VERIFY_SIDE

Progress = Union[bool, None, Callable[[int, int], Any]]


class DedupError(FastimgError, ValueError):
    """A bad argument to :func:`find_duplicates`, or no default threshold for the index and metric."""


@dataclass(frozen=True)
class DuplicatePair:
    """Two duplicate images, ``a < b`` (ids), and the score that links them.

    ``score`` is the metric's score of the pair (the lower id as the query);
    ``inliers`` is the geometric verification's count (``verify="orb"``), else ``None``;
    ``agreement`` its photometric agreement (``verify="orb"`` with ``same_photo=True``), else ``None``.
    """

    a: int
    b: int
    score: float
    inliers: Optional[int] = None
    agreement: Optional[float] = None


@dataclass(frozen=True)
class DuplicateGroup:
    """A connected group of near-duplicate images.

    Attributes
    ----------
    ids : tuple of int
        Index ids, ascending.
    paths : tuple of str
        ``Index.paths(ids)``, in the same order.
    pairs : tuple of DuplicatePair
        Every pair of the group within the threshold, sorted by ``(a, b)`` (at
        least ``len(ids) - 1`` of them: they connect the group).
    """

    ids: tuple[int, ...]
    paths: tuple[str, ...]
    pairs: tuple[DuplicatePair, ...]

    def __len__(self) -> int:
        return len(self.ids)


def _metric(index: Any, metric: Optional[str]) -> Any:
    from fastimg.metrics import get_metric

    return get_metric(index.metric if metric is None else metric)


def _params_digest(params: Any) -> str:
    """A short digest of a descriptor's ``params`` (canonical JSON)."""
    import hashlib
    import json

    text = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def _spec(index: Any) -> dict:
    spec = getattr(index, "descriptor_spec", None)  # an Index; else info() (it walks the index directory)
    return dict(spec if spec is not None else index.info()["descriptor"])


def _no_default(index: Any, metric: str) -> Optional[str]:
    """Why the index has no default threshold for ``metric`` (None: it has one)."""
    spec = _spec(index)
    name = spec.get("name", "custom")
    if name == "custom":
        return "the index holds the caller's own vectors (descriptor='custom')"
    if (name, metric) not in THRESHOLDS:
        known = [m for d, m in THRESHOLDS if d == name]
        return (f"descriptor {name!r} has no calibrated default for metric {metric!r}"
                + (f" (only for {', '.join(map(repr, known))})" if known else ""))
    version, digest = _CALIBRATED[name]
    if spec.get("version") != version or _params_digest(spec.get("params", {})) != digest:
        return (f"descriptor {name!r} (version {spec.get('version')}, params {spec.get('params', {})}) is not the one "
                f"calibrated (version {version}, its default params)")
    wpath = getattr(index, "whitening_path", None)
    if wpath is not None and wpath.exists():
        return "the index searches its PCA-whitened vectors (fit_whitening): the scores are not the descriptor's"
    return None


def default_threshold(index: Any, metric: Optional[str] = None) -> Optional[float]:
    """The default duplicate threshold for ``metric`` (default: the index's metric).

    :data:`THRESHOLDS`'s entry for the index's descriptor and the metric, when the
    descriptor is the calibrated one (its version and default parameters) and no
    PCA-whitening is fitted; otherwise ``None`` (pass a threshold): a
    ``descriptor="custom"`` index, a metric other than the calibrated one, a
    descriptor with other parameters, a whitened index.
    """
    name = _metric(index, metric).name
    if _no_default(index, name) is not None:
        return None
    return THRESHOLDS[(_spec(index)["name"], name)]


def defaults_text(indent: str = "  ", width: int = 79) -> str:
    """:data:`THRESHOLDS` as ``descriptor/metric T`` items, wrapped (for help texts; no NumPy)."""
    import textwrap

    items = [f"{d}/{m} {t:.8g}" for (d, m), t in THRESHOLDS.items()]
    return textwrap.fill(", ".join(items), width=width, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False, break_long_words=False)


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold):
        raise DedupError(f"threshold must be a finite number; got {threshold!r}")
    return float(threshold)


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise DedupError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def _check_agreement(same_photo: Any, min_agreement: Any) -> Optional[float]:
    """The agreement threshold ``verify="orb"`` applies (``None``: none, ``same_photo=False``)."""
    if not isinstance(same_photo, bool):
        raise DedupError(f"same_photo must be True or False; got {same_photo!r}")
    if not same_photo:
        if min_agreement is not None:
            raise DedupError(f"min_agreement={min_agreement!r} applies to same_photo=True only; "
                             "same_photo=False accepts a pair on its inliers alone")
        return None
    if min_agreement is None:
        return VERIFY_MIN_AGREEMENT
    if (isinstance(min_agreement, bool) or not isinstance(min_agreement, numbers.Real)
            or not -1.0 <= min_agreement <= 1.0):
        raise DedupError(f"min_agreement must be a number from -1 to 1 (a correlation); got {min_agreement!r}")
    return float(min_agreement)


def _progress(progress: Progress, total: int) -> tuple[Optional[Callable[[int, int], Any]], Any]:
    """``(callback, bar)``: a callable is used as is, ``True`` draws a tqdm bar."""
    if progress is None or progress is False:
        return None, None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="img", desc="duplicates")
        return (lambda done, _total: bar.update(done - bar.n)), bar
    if callable(progress):
        return progress, None
    raise DedupError(f"progress must be a bool or a callable(done, total); got {progress!r}")


def duplicate_pairs(index: Any, threshold: float, *, metric: Optional[str] = None, k: int = 16,
                    batch: int = 256, mode: str = "exact", ef: Optional[int] = None,
                    progress: Progress = None) -> list[DuplicatePair]:
    """Every pair ``(a < b)`` of live images whose score is within ``threshold``.

    Parameters are those of :func:`find_duplicates` (``threshold`` required).

    Returns
    -------
    list of DuplicatePair
        Sorted by ``(a, b)``.
    """
    import numpy as np

    threshold = _check_threshold(threshold)
    k = _check_count("k", k)
    batch = _check_count("batch", batch)
    m = _metric(index, metric)
    vectors = index.vectors  # row i is id i, deleted rows included: hence live_ids()
    live = np.asarray(index.live_ids(), dtype=np.int64)
    n = int(live.size)
    callback, bar = _progress(progress, n)
    found: dict[tuple[int, int], float] = {}
    try:
        if n < 2:
            return []
        extra = {} if ef is None else {"ef": ef}
        k0 = min(n, k)
        for start in range(0, n, batch):
            pending = live[start:start + batch]
            kk = k0
            while pending.size:
                ids, scores = index.search_batch(np.ascontiguousarray(vectors[pending]), kk, metric=m.name,
                                                 exclude_self=False, mode=mode, **extra)
                ids = np.asarray(ids, dtype=np.int64)
                scores = np.asarray(scores, dtype=np.float64)
                with np.errstate(invalid="ignore"):  # NaN scores pad missing results
                    ok = (scores >= threshold if m.higher_is_better else scores <= threshold) & (ids >= 0)
                for r, j in zip(*np.nonzero(ok & (ids != pending[:, None]))):
                    q, other = int(pending[r]), int(ids[r, j])
                    key = (q, other) if q < other else (other, q)
                    if q < other:  # the lower id as the query wins (asymmetric metrics)
                        found[key] = float(scores[r, j])
                    else:
                        found.setdefault(key, float(scores[r, j]))
                if kk >= n:
                    break
                pending = pending[ok[:, -1]]  # rows whose every neighbour so far is a duplicate
                kk = min(n, kk * 4)
            if callback is not None:
                callback(min(start + batch, n), n)
    finally:
        if bar is not None:
            bar.close()
    return [DuplicatePair(a, b, s) for (a, b), s in sorted(found.items())]


def connected_groups(pairs: Iterable[Union[DuplicatePair, tuple]]) -> list[list[int]]:
    """Connected components of the graph whose edges are ``pairs`` (union-find).

    ``pairs`` holds :class:`DuplicatePair` objects or ``(a, b[, score])`` tuples.
    Returns the components with at least one edge, each sorted ascending, largest
    first (ties: lowest first id first).
    """
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for p in pairs:
        a, b = (p.a, p.b) if isinstance(p, DuplicatePair) else (p[0], p[1])
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for x in parent:
        groups.setdefault(find(x), []).append(x)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: (-len(g), g[0]))


def find_duplicates(index: Any, *, threshold: Optional[float] = None, metric: Optional[str] = None,
                    k: int = 16, batch: int = 256, mode: str = "exact", ef: Optional[int] = None,
                    progress: Progress = None, verify: Optional[str] = None,
                    candidates: int = VERIFY_CANDIDATES, min_inliers: Optional[int] = None,
                    hash_bits: int = VERIFY_HASH_BITS, workers: Optional[int] = None,
                    same_photo: bool = True, min_agreement: Optional[float] = None) -> list[DuplicateGroup]:
    """Groups of near-duplicate images in an index.

    Parameters
    ----------
    index : fastimg.Index
        An open index (read-only is enough).
    threshold : float, optional
        A pair is a duplicate when its score is ``>= threshold`` (similarity
        metrics: pearson, cosine, intersect) or ``<= threshold`` (distances).
        Default: :func:`default_threshold` (an error for metrics without one).
    metric : str, optional
        Default: the index's metric.  Scores are compared in the index's search
        space (after its whitening, when one is fitted).
    k : int, default 16
        Neighbours fetched per row at first (raised 4x while they are all duplicates).
    batch : int, default 256
        Rows searched per ``search_batch`` call.
    mode : {"exact", "auto", "ann"}, default "exact"
        The search mode; ``"exact"`` finds every pair, the graph modes may miss
        some (``ef`` sets the graph's search breadth).
    ef : int, optional
        HNSW search breadth for ``mode="ann"`` / ``"auto"``.
    progress : bool or callable, optional
        ``progress(done, total)`` after each batch of rows, or ``True`` for a tqdm bar.
    verify : {"orb", "none"}, optional
        ``"orb"``: geometric verification of candidate pairs (:func:`verified_pairs`:
        each row's ``candidates`` nearest neighbours and the pairs of close DCT hashes,
        kept when at least ``min_inliers`` ORB matches fit one similarity transform);
        it reads every indexed image file again.  ``"none"``: the score rule alone
        (a pair within ``threshold``).  Default: ``"orb"`` when no ``threshold`` is
        given, ``"none"`` when one is.
    candidates, min_inliers, hash_bits : int
        ``verify="orb"``'s parameters (defaults :data:`VERIFY_CANDIDATES`,
        :data:`VERIFY_MIN_INLIERS` (:data:`VERIFY_MIN_INLIERS_SCENE` with
        ``same_photo=False``), :data:`VERIFY_HASH_BITS`; ``hash_bits=-1``: no hash
        candidates).  With ``threshold`` as well, a pair must also be within it.
    workers : int, optional
        Threads reading images and matching them (``verify="orb"``; default: one per CPU).
    same_photo : bool, default True
        ``verify="orb"``: ``True`` keeps copies of one photo only (its edits: resized,
        re-encoded, cropped, brightened, straightened): a verified pair must also agree
        pixel by pixel (:func:`photometric_agreement` >= ``min_agreement``), so two
        photos of one scene taken moments apart (a burst) are not grouped.  ``False``:
        inliers alone, bursts of one scene from one spot are grouped too.
    min_agreement : float, optional
        ``same_photo=True``'s threshold, a correlation in [-1, 1] (default
        :data:`VERIFY_MIN_AGREEMENT`); an error with ``same_photo=False``.

    Returns
    -------
    list of DuplicateGroup
        Largest group first (ties: lowest first id first).

    Raises
    ------
    DedupError
        No ``threshold`` and no default for the metric (``verify="none"``), or a bad argument.
    """
    m = _metric(index, metric)
    if verify is None:
        verify = "orb" if threshold is None else "none"
    if verify not in ("orb", "none"):
        raise DedupError(f"verify must be 'orb' or 'none'; got {verify!r}")
    _check_agreement(same_photo, min_agreement)
    if verify == "none" and min_agreement is not None:
        raise DedupError(f"min_agreement={min_agreement!r} applies to verify='orb' only (the score rule reads no image)")
    if verify == "orb":
        pairs = verified_pairs(index, threshold=threshold, metric=m.name, candidates=candidates,
                               min_inliers=min_inliers, hash_bits=hash_bits, batch=batch, mode=mode, ef=ef,
                               workers=workers, progress=progress, same_photo=same_photo,
                               min_agreement=min_agreement)
        return _grouped(index, pairs)
    if threshold is None:
        threshold = default_threshold(index, m.name)
        if threshold is None:
            raise DedupError(f"metric {m.name!r} has no default duplicate threshold for the index at "
                             f"{getattr(index, 'path', '?')}: {_no_default(index, m.name)}; pass threshold= "
                             "(calibrated defaults: fastimg.dedup.THRESHOLDS, bench/quality.md)")
    pairs = duplicate_pairs(index, threshold, metric=m.name, k=k, batch=batch, mode=mode, ef=ef,
                            progress=progress)
    return _grouped(index, pairs)


def _grouped(index: Any, pairs: list[DuplicatePair]) -> list[DuplicateGroup]:
    groups = connected_groups(pairs)
    if not groups:
        return []
    ids = [i for g in groups for i in g]
    path_of = dict(zip(ids, index.paths(ids)))
    group_of = {i: n for n, g in enumerate(groups) for i in g}
    members: list[list[DuplicatePair]] = [[] for _ in groups]
    for p in pairs:
        members[group_of[p.a]].append(p)
    return [DuplicateGroup(tuple(g), tuple(str(path_of[i]) for i in g), tuple(ps))
            for g, ps in zip(groups, members)]


# --------------------------------------------------------------------------- #
# geometric verification (verify="orb")
# --------------------------------------------------------------------------- #



@dataclass(frozen=True)
class ImageSignature:
    """What :func:`match_inliers` compares: ORB keypoints and a DCT hash of one image.

    Attributes
    ----------
    points : numpy.ndarray
        ``(n, 2)`` float32 keypoint positions, in pixels of the image resized to
        ``VERIFY_SIDE`` on its longer side.
    descriptors : numpy.ndarray
        ``(n, 32)`` uint8 ORB descriptors (``n`` may be 0: a blank image).
    dct_hash : int
        64-bit perceptual hash: the signs of the 8x8 lowest DCT frequencies of the
        32x32 grey image against their median.
    size : tuple of int
        ``(width, height)`` of the resized image.
    thumb : numpy.ndarray or None
        The resized grey image shrunk to ``VERIFY_THUMB_SIDE`` on its longer side
        (uint8, ``(h, w)``): what :func:`photometric_agreement` compares.
    """

    points: Any
    descriptors: Any
    dct_hash: int
    size: tuple[int, int]
    thumb: Any = None


def image_signature(src: Any, *, side: int = VERIFY_SIDE, features: int = VERIFY_FEATURES) -> ImageSignature:
    """The :class:`ImageSignature` of an image (a path, encoded bytes or a BGR/grey array).

    Raises
    ------
    fastimg.errors.ImageError
        The image cannot be read (``fastimg.image.load_image``'s errors).
    """
    import cv2
    import numpy as np

    from fastimg.image import load_image

    side = _check_count("side", side)
    features = _check_count("features", features)
    img = load_image(src, max_side=2 * side)
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    h, w = grey.shape
    s = side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    keypoints, desc = cv2.ORB_create(nfeatures=features).detectAndCompute(grey, None)
    points = np.array([k.pt for k in keypoints], dtype=np.float32).reshape(-1, 2)
    if desc is None:
        desc = np.zeros((0, 32), dtype=np.uint8)
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].ravel()
    bits = low > np.median(low)
    t = VERIFY_THUMB_SIDE / max(size)
    thumb = cv2.resize(grey, (max(1, round(size[0] * t)), max(1, round(size[1] * t))),
                       interpolation=cv2.INTER_AREA if t < 1 else cv2.INTER_LINEAR)
    return ImageSignature(points, np.ascontiguousarray(desc), int(np.packbits(bits).view(">u8")[0]), size, thumb)


def match_transform(a: ImageSignature, b: ImageSignature) -> tuple[int, Any]:
    """``(inliers, M)``: the similarity transform mapping ``a``'s keypoints onto ``b``'s.

    ORB descriptors are matched by Hamming distance (brute force, Lowe's ratio test
    0.8, at most one match per keypoint of ``b``); RANSAC
    (``cv2.estimateAffinePartial2D``: rotation, uniform scale, shift, 4 px tolerance)
    keeps the matches one transform explains.  ``M`` is its 2x3 matrix in the resized
    images' pixels; ``(0, None)`` with fewer than 4 matches or a scale outside 1/3-3
    (both images are resized to the same longer side: a copy's scale is near 1).
    """
    import cv2
    import numpy as np

    if len(a.descriptors) < 2 or len(b.descriptors) < 2:
        return 0, None
    matches = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a.descriptors, b.descriptors, k=2)
    good = sorted((m[0] for m in matches if len(m) == 2 and m[0].distance < _RATIO * m[1].distance),
                  key=lambda m: m.distance)
    taken: set[int] = set()
    good = [m for m in good if not (m.trainIdx in taken or taken.add(m.trainIdx))]  # one match per b keypoint
    if len(good) < 4:
        return 0, None
    src = a.points[np.fromiter((m.queryIdx for m in good), dtype=np.intp, count=len(good))]
    dst = b.points[np.fromiter((m.trainIdx for m in good), dtype=np.intp, count=len(good))]
    m, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=_REPROJ,
                                          maxIters=_RANSAC_ITERS, confidence=0.99)
    if m is None or mask is None:
        return 0, None
    scale = math.sqrt(abs(float(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0])))
    if not _SCALES[0] <= scale <= _SCALES[1]:  # a collapsed or exploded "transform" (few keypoints in b)
        return 0, None
    return int(mask.sum()), m


def match_inliers(a: ImageSignature, b: ImageSignature) -> int:
    """The number of ORB matches one similarity transform explains (:func:`match_transform`)."""
    return match_transform(a, b)[0]


def photometric_agreement(a: ImageSignature, b: ImageSignature, m: Any) -> float:
    """How well ``a``'s pixels agree with ``b``'s once ``a`` is mapped onto ``b`` by ``m``.

    ``m`` is a 2x3 transform from ``a``'s resized frame to ``b``'s (as
    :func:`match_transform` returns it).  Both thumbnails (``ImageSignature.thumb``)
    are blurred (Gaussian, sigma 1 px), ``a``'s is warped into ``b``'s frame
    (``cv2.warpAffine``, bilinear), and the result is the zero-mean normalised
    cross-correlation (Pearson's r) of the two over the overlap: the pixels of
    ``b``'s thumbnail whose source lies inside ``a``'s thumbnail with a 1-pixel
    margin.  1.0 is perfect agreement; brightness and contrast changes (a linear
    map of the grey levels) do not change it.  An overlap under 10 % of ``b``'s
    thumbnail, or a flat one (no variance), gives 0.0.

    Raises
    ------
    DedupError
        A signature without a thumbnail.
    """
    import cv2
    import numpy as np

    if a.thumb is None or b.thumb is None:
        raise DedupError("photometric_agreement needs signatures with a thumbnail (image_signature's); got thumb=None")
    ha, wa = a.thumb.shape
    hb, wb = b.thumb.shape
    to_a = np.diag([wa / a.size[0], ha / a.size[1], 1.0])
    to_b = np.diag([wb / b.size[0], hb / b.size[1], 1.0])
    mt = (to_b @ np.vstack([np.asarray(m, dtype=np.float64), [0.0, 0.0, 1.0]]) @ np.linalg.inv(to_a))
    blur_a = cv2.GaussianBlur(a.thumb.astype(np.float32), (0, 0), _BLUR)
    blur_b = cv2.GaussianBlur(b.thumb.astype(np.float32), (0, 0), _BLUR)
    warped = cv2.warpAffine(blur_a, mt[:2], (wb, hb), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    yy, xx = np.mgrid[0:hb, 0:wb]
    inv = np.linalg.inv(mt)
    sx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]  # where each pixel of b comes from in a
    sy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    inside = (sx >= 1) & (sx <= wa - 2) & (sy >= 1) & (sy <= ha - 2)
    if np.count_nonzero(inside) < _MIN_OVERLAP * inside.size:
        return 0.0
    x = warped[inside].astype(np.float64)
    y = blur_b[inside].astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    den = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / den if den > 0 else 0.0


def verify_pair(a: ImageSignature, b: ImageSignature) -> tuple[int, float]:
    """``(inliers, agreement)`` of two signatures: :func:`match_transform`'s count and
    :func:`photometric_agreement` under its transform (0.0 when there is none)."""
    n, m = match_transform(a, b)
    return n, (photometric_agreement(a, b, m) if m is not None else 0.0)


def hash_pairs(hashes: Any, max_bits: int = VERIFY_HASH_BITS, *, chunk: int = 2048) -> Any:
    """``(m, 2)`` int64 positions ``i < j`` whose 64-bit hashes differ in at most ``max_bits`` bits.

    Every pair is compared (NumPy, ``chunk`` rows at a time): quadratic in ``len(hashes)``.
    """
    import numpy as np

    h = np.asarray(hashes, dtype=np.uint64)
    out = [np.zeros((0, 2), dtype=np.int64)]
    for s in range(0, h.size, chunk):
        block = h[s:s + chunk]
        d = np.bitwise_count(block[:, None] ^ h[None, s:])  # upper triangle from row s
        i, j = np.nonzero(d <= max_bits)
        i += s
        j += s
        keep = i < j
        out.append(np.stack([i[keep], j[keep]], axis=1).astype(np.int64))
    return np.concatenate(out)


def _map(fn: Callable, items: list, workers: Optional[int]) -> list:
    import os
    from concurrent.futures import ThreadPoolExecutor

    n = (os.cpu_count() or 1) if workers is None else workers
    if n <= 1 or len(items) < 2:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(n) as pool:  # OpenCV releases the GIL
        return list(pool.map(fn, items))


def _signatures(paths: list[str], workers: Optional[int]) -> tuple[list[Optional[ImageSignature]], dict[str, str]]:
    from fastimg.errors import FastimgError as _Err

    failed: dict[str, str] = {}

    def one(p: str) -> Optional[ImageSignature]:
        try:
            return image_signature(p)
        except _Err as exc:
            failed[p] = str(exc)
            return None

    sigs = _map(one, paths, workers)
    # threads finish in any order: report failures in the order of the paths (the ids)
    return sigs, {p: failed[p] for p in paths if p in failed}


def verified_pairs(index: Any, *, threshold: Optional[float] = None, metric: Optional[str] = None,
                   candidates: int = VERIFY_CANDIDATES, min_inliers: Optional[int] = None,
                   hash_bits: int = VERIFY_HASH_BITS, batch: int = 256, mode: str = "exact",
                   ef: Optional[int] = None, workers: Optional[int] = None,
                   progress: Progress = None, same_photo: bool = True,
                   min_agreement: Optional[float] = None) -> list[DuplicatePair]:
    """Duplicate pairs by geometric verification (``find_duplicates(verify="orb")``).

    Candidates: each live row's ``candidates`` nearest neighbours in the index
    (its metric; only those within ``threshold`` when one is given), plus every
    pair whose DCT hashes differ in at most ``hash_bits`` bits (they catch what the
    descriptor misses, e.g. a brightness change for a colour histogram).  A
    candidate is a duplicate when :func:`match_inliers` of the two image files is
    at least ``min_inliers`` and, with ``same_photo=True``, their
    :func:`photometric_agreement` under that transform is at least ``min_agreement``
    (default :data:`VERIFY_MIN_AGREEMENT`).  Images that cannot be read are logged on
    the ``fastimg.dedup`` logger and take part in no pair.
    """
    import logging

    import numpy as np

    from fastimg.metrics import exact_scores

    min_agreement = _check_agreement(same_photo, min_agreement)
    candidates = _check_count("candidates", candidates)
    if min_inliers is None:
        min_inliers = VERIFY_MIN_INLIERS if same_photo else VERIFY_MIN_INLIERS_SCENE
    min_inliers = _check_count("min_inliers", min_inliers)
    if isinstance(hash_bits, bool) or not isinstance(hash_bits, numbers.Integral) or not -1 <= hash_bits <= 64:
        raise DedupError(f"hash_bits must be an integer from -1 (no hash candidates) to 64; got {hash_bits!r}")
    if threshold is not None:
        threshold = _check_threshold(threshold)
    if workers is not None:
        workers = _check_count("workers", workers)
    batch = _check_count("batch", batch)
    m = _metric(index, metric)
    live = np.asarray(index.live_ids(), dtype=np.int64)
    n = int(live.size)
    callback, bar = _progress(progress, n)
    try:
        if n < 2:
            return []
        paths = [str(p) for p in index.paths(live.tolist())]
        sigs, failed = _signatures(paths, workers)
        if len(failed) == n:
            first = next(iter(failed.items()))
            raise DedupError(f"verify='orb' reads the indexed image files, and none of the {n} indexed images "
                             f"could be read (e.g. {first[1]}); pass threshold= or verify='none' for the score "
                             "rule alone")
        if failed:
            shown = "; ".join(f"{p}: {e}" for p, e in list(failed.items())[:5])
            logging.getLogger("fastimg.dedup").warning(
                "duplicates: %d of %d images could not be read and were left out of the verification: %s%s",
                len(failed), n, shown, " ..." if len(failed) > 5 else "")
        vectors = index.vectors
        pos = {int(i): r for r, i in enumerate(live)}
        cand: set[tuple[int, int]] = set()
        extra = {} if ef is None else {"ef": ef}
        kk = min(n, candidates + 1)
        for start in range(0, n, batch):
            rows = live[start:start + batch]
            ids, scores = index.search_batch(np.ascontiguousarray(vectors[rows]), kk, metric=m.name,
                                             exclude_self=False, mode=mode, **extra)
            ids = np.asarray(ids, dtype=np.int64)
            ok = ids >= 0
            if threshold is not None:
                scores = np.asarray(scores, dtype=np.float64)
                with np.errstate(invalid="ignore"):
                    ok &= scores >= threshold if m.higher_is_better else scores <= threshold
            for r, j in zip(*np.nonzero(ok & (ids != rows[:, None]))):
                a, b = pos[int(rows[r])], pos[int(ids[r, j])]
                cand.add((a, b) if a < b else (b, a))
            if callback is not None:
                callback(min(start + batch, n), n)
        if hash_bits >= 0:
            have = np.array([s is not None for s in sigs])
            where = np.flatnonzero(have)
            hp = hash_pairs([sigs[i].dct_hash for i in where], hash_bits)  # type: ignore[union-attr]
            cand.update((int(where[i]), int(where[j])) for i, j in hp)
        todo = sorted(p for p in cand if sigs[p[0]] is not None and sigs[p[1]] is not None)
        def check(p: tuple[int, int]) -> tuple[int, Optional[float]]:
            sa, sb = sigs[p[0]], sigs[p[1]]
            n_in, t = match_transform(sa, sb)  # type: ignore[arg-type]
            if n_in < min_inliers or min_agreement is None:
                return n_in, None
            return n_in, photometric_agreement(sa, sb, t)  # type: ignore[arg-type]

        checked = _map(check, todo, workers)
        out = []
        for (a, b), (c, agr) in zip(todo, checked):
            if c >= min_inliers and (min_agreement is None or agr >= min_agreement):  # type: ignore[operator]
                ia, ib = int(live[a]), int(live[b])
                score = float(exact_scores(m, vectors[ia], vectors[ib:ib + 1])[0])
                if threshold is None or (score >= threshold if m.higher_is_better else score <= threshold):
                    out.append(DuplicatePair(ia, ib, score, int(c), agr))
    finally:
        if bar is not None:
            bar.close()
    return sorted(out, key=lambda p: (p.a, p.b))
