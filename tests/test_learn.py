"""Metric learning (``fastimg.learn``) and ``fastimg.projection.LinearProjection``.

Oracles: scikit-learn's ``LinearDiscriminantAnalysis(solver="eigen")`` (same
shrunk scatter matrices, so the same discriminant directions and scales) and
``NeighborhoodComponentsAnalysis`` (its objective and gradient at a given
matrix, and the leave-one-out 1-NN accuracy it reaches), SciPy's generalised
``eigh`` and ``check_grad``, and NumPy written here (scatter matrices, the
projection formula, brute-force nearest neighbours).
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
from scipy.optimize import check_grad
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.neighbors import NeighborhoodComponentsAnalysis

import fastimg
from fastimg.errors import DescriptorError, FastimgError
from fastimg.learn import METHODS, encode_labels, learn_projection, nca_objective, split_labels
from fastimg.projection import LinearProjection, PCAWhitening, load_projection


# --------------------------------------------------------------------------- data
def blobs(n: int = 300, d: int = 12, classes: int = 5, *, seed: int = 0, noise_dims: int = 0,
          noise: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes (anisotropic), plus ``noise_dims`` high-variance label-free coordinates."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * 2.0
    y = rng.permutation(np.arange(n) % classes)
    x = centres[y] + rng.normal(size=(n, d)) * np.linspace(0.3, 2.0, d)
    if noise_dims:
        x = np.hstack([x, rng.normal(size=(n, noise_dims)) * noise])
    return x, y


def scatter(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(total, within-class) covariance, biased, written with explicit loops over classes."""
    n = x.shape[0]
    st = np.cov(x.T, bias=True)
    sw = np.zeros_like(st)
    for c in np.unique(y):
        xi = x[y == c]
        sw += (xi - xi.mean(axis=0)).T @ (xi - xi.mean(axis=0))
    return st, sw / n


def shrink(s: np.ndarray, a: float) -> np.ndarray:
    return (1 - a) * s + a * np.trace(s) / s.shape[0] * np.eye(s.shape[0])


def loo_1nn_accuracy(z: np.ndarray, y: np.ndarray) -> float:
    d = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return float(np.mean(y[np.argmin(d, axis=1)] == y))


def sk_nca_objective(a: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """scikit-learn's NCA objective (sum over rows) and gradient at matrix ``a``."""
    nca = NeighborhoodComponentsAnalysis()
    nca.n_iter_, nca.verbose = 1, 0
    same = (y[:, None] == y[None, :]).astype(float)
    f, g = nca._loss_grad_lbfgs(a.ravel(), x, same, 1.0)
    return float(f), g.reshape(a.shape)


# --------------------------------------------------------------------------- LDA
@pytest.mark.parametrize("shrinkage", [0.0, 0.3])
def test_lda_directions_and_scales_match_sklearn(shrinkage):
    x, y = blobs()
    p = learn_projection(x, y, method="lda", shrinkage=shrinkage, normalize=False)
    sk = LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrinkage or None).fit(x, y)
    k = np.unique(y).size - 1
    mine, ref = p.matrix_[:k], sk.scalings_[:, :k].T
    for a, b in zip(mine, ref):  # same direction up to sign, same length
        assert abs(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b)) == pytest.approx(1.0, abs=1e-9)
        assert np.linalg.norm(a) == pytest.approx(np.linalg.norm(b), rel=1e-7)
    # the discriminant coordinates give sklearn's distances (translation and sign do not matter)
    z_mine = p.transform(x)[:, :k].astype(np.float64)
    z_ref = sk.transform(x)
    dm = ((z_mine[:, None] - z_mine[None]) ** 2).sum(-1)
    dr = ((z_ref[:, None] - z_ref[None]) ** 2).sum(-1)
    np.testing.assert_allclose(dm, dr, rtol=1e-4, atol=1e-4)


def test_lda_when_dimension_exceeds_samples_matches_sklearn_neighbours():
    x, y = blobs(n=40, d=60, classes=4, seed=3)
    p = learn_projection(x, y, method="lda", shrinkage=0.5, dim=3, normalize=False)
    sk = LinearDiscriminantAnalysis(solver="eigen", shrinkage=0.5).fit(x, y)
    z, zr = p.transform(x).astype(np.float64), sk.transform(x)
    for q in range(len(x)):
        dm = ((z - z[q]) ** 2).sum(1)
        dr = ((zr - zr[q]) ** 2).sum(1)
        assert np.array_equal(np.argsort(dm, kind="stable")[:10], np.argsort(dr, kind="stable")[:10])


def test_lda_full_rank_solves_the_generalised_eigenproblem():
    """All D rows: unit within-class variance, orthogonal, by decreasing St/Sw ratio (scipy's eigh)."""
    x, y = blobs(d=10)
    a = 0.2
    p = learn_projection(x, y, method="lda", shrinkage=a, dim=10, normalize=False)
    assert p.output_dim == x.shape[1]
    st, sw = scatter(x, y)
    st_r, sw_r = shrink(st, a), shrink(sw, a)
    m = p.matrix_
    np.testing.assert_allclose(m @ sw_r @ m.T, np.eye(10), atol=1e-9)
    ratios = scipy.linalg.eigh(st_r, sw_r, eigvals_only=True)[::-1]
    np.testing.assert_allclose(m @ st_r @ m.T, np.diag(ratios), atol=1e-8)
    np.testing.assert_allclose(p.mean_, x.mean(axis=0))


def test_lda_with_singular_within_scatter_needs_shrinkage():
    x, y = blobs(n=30, d=50, classes=3)
    with pytest.raises(DescriptorError, match="singular.*shrinkage > 0"):
        learn_projection(x, y, method="lda", shrinkage=0.0)
    p = learn_projection(x, y, method="lda")  # the default shrinkage copes
    assert np.isfinite(p.matrix_).all()


def test_lda_separates_classes_that_raw_distances_mix():
    """Label-free high-variance coordinates swamp the raw metric; the projection ignores them.

    (A small shrinkage: towards trace / D * I, a large one would give the noisy
    coordinates the weight of the useful ones - the documented caveat.)
    """
    x, y = blobs(n=400, d=8, noise_dims=40, seed=5)
    tr, te = split_labels(y, 0.5, seed=0)
    p = learn_projection(x[tr], y[tr], method="lda", shrinkage=0.02)
    raw = loo_1nn_accuracy(x[te], y[te])
    learned = loo_1nn_accuracy(p.transform(x[te]).astype(np.float64), y[te])
    assert raw < 0.7 and learned > 0.9, (raw, learned)


# --------------------------------------------------------------------------- NCA
def test_nca_objective_and_gradient_match_sklearn():
    x, y = blobs(n=80, d=9)
    a = np.random.default_rng(1).normal(size=(4, 9)) * 0.3
    f, g = nca_objective(a, x, y)
    f_ref, g_ref = sk_nca_objective(a, x, y)
    assert f * len(x) == pytest.approx(f_ref, rel=1e-10)
    np.testing.assert_allclose(g * len(x), g_ref, rtol=1e-8, atol=1e-10)
    assert 0.0 <= f <= 1.0


def test_nca_gradient_is_the_derivative_of_the_objective():
    x, y = blobs(n=40, d=6, classes=3, seed=2)
    shape = (3, 6)
    fun = lambda v: nca_objective(v.reshape(shape), x, y)[0]  # noqa: E731
    grad = lambda v: nca_objective(v.reshape(shape), x, y)[1].ravel()  # noqa: E731
    v0 = np.random.default_rng(4).normal(size=shape).ravel() * 0.4
    err = check_grad(fun, grad, v0, epsilon=1e-6)
    assert err < 1e-6 * max(1.0, np.linalg.norm(grad(v0))), err


@pytest.mark.parametrize("init", ["lda", "pca", "identity"])
def test_nca_reaches_sklearn_leave_one_out_accuracy(init):
    x, y = blobs(n=240, d=6, classes=4, noise_dims=6, noise=4.0, seed=7)
    dim = 3  # sklearn's LDA start gives at most n_classes - 1
    p = learn_projection(x, y, method="nca", dim=dim, init=init, max_iter=200, normalize=False)
    sk = NeighborhoodComponentsAnalysis(n_components=dim, init=init, max_iter=200, random_state=0).fit(x, y)
    acc = loo_1nn_accuracy(p.transform(x).astype(np.float64), y)
    acc_ref = loo_1nn_accuracy(sk.transform(x), y)
    assert acc >= acc_ref - 0.03, (acc, acc_ref)
    assert acc > loo_1nn_accuracy(x, y) + 0.1
    # the objective (sklearn's function) at our optimum is as good as at sklearn's
    f = sk_nca_objective(p.matrix_, x, y)[0] / len(x)
    f_ref = sk_nca_objective(sk.components_, x, y)[0] / len(x)
    assert f >= f_ref - 0.02, (f, f_ref)
    assert p.params["objective"] == pytest.approx(f, abs=1e-5)
    assert p.params["objective"] >= p.params["objective_init"]


def test_nca_with_an_array_start_and_sampling():
    x, y = blobs(n=200, d=6, classes=4)
    a0 = np.eye(3, 6)
    p = learn_projection(x, y, method="nca", dim=3, init=a0, max_iter=5)
    assert p.params["init"] == "array" and p.n_fit_ == 200
    assert p.params["objective_init"] == pytest.approx(nca_objective(a0, x, y)[0], abs=1e-6)  # used as given
    s = learn_projection(x, y, method="nca", dim=3, init=a0, max_iter=5, max_samples=50, seed=1)
    assert s.n_fit_ == 48  # floor(50 per 200) of each class of 50: a class-stratified sample
    with pytest.raises(DescriptorError, match=r"shape \(dim, D\) = \(3, 6\)"):
        learn_projection(x, y, method="nca", dim=3, init=np.eye(2, 6))


# --------------------------------------------------------------------------- labels and rows
def test_hashable_labels_unlabelled_and_nan_rows():
    x, y = blobs(n=120, d=5, classes=3)
    names = np.array(["cat", "dog", ("bird", 1)], dtype=object)[y]
    ref = learn_projection(x, y, method="lda", normalize=False)
    xx = np.vstack([x, np.full((2, 5), np.nan), x[:3]])
    labels = list(names) + ["cat", "dog", None, float("nan"), np.float64("nan")]
    p = learn_projection(xx, labels, method="lda", normalize=False)
    np.testing.assert_allclose(p.matrix_, ref.matrix_, atol=1e-10)
    np.testing.assert_allclose(p.mean_, ref.mean_, atol=1e-12)
    assert p.params["n_nan_rows"] == 2 and p.params["n_unlabelled"] == 3 and p.n_fit_ == 120
    assert p.params["n_classes"] == 3


@pytest.mark.filterwarnings("ignore:Only one sample available")  # sklearn, on the singleton class
def test_singleton_class_is_kept_as_sklearn_does():
    x, y = blobs(n=100, d=6, classes=4)
    x = np.vstack([x, np.full((1, 6), 5.0)])
    y = np.append(y, 9)
    p = learn_projection(x, y, method="lda", shrinkage=0.1, normalize=False)
    sk = LinearDiscriminantAnalysis(solver="eigen", shrinkage=0.1).fit(x, y)
    assert p.params["n_singletons"] == 1 and p.params["n_classes"] == 5
    for a, b in zip(p.matrix_[:4], sk.scalings_[:, :4].T):
        assert abs(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b)) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("vectors, labels, match", [
    (np.zeros((4, 3)), [0, 0, 0, 0], "at least 2 classes"),
    (np.arange(12.0).reshape(4, 3), [0, 1, 2, 3], "at least one class with 2"),
    (np.zeros((4, 3)), [0, 1, 0], r"one label per vector \(4\); got 3"),
    (np.zeros((4, 3)), [[0], [1], [0], [1]], r"labels\[0\] = \[0\] is not hashable"),
    (np.zeros((4, 3)), np.zeros((4, 1)), "1-D"),
    (np.zeros(4), [0, 1, 0, 1], r"shape \(n, D\)"),
    (np.array([[0.0, 1.0], [np.inf, 0.0], [1.0, 1.0], [2.0, 0.0]]), [0, 1, 0, 1], "row 1 holds infinite"),
    (np.full((4, 2), np.nan), [0, 1, 0, 1], "0 usable rows"),
])
def test_bad_input_is_a_clear_error(vectors, labels, match):
    with pytest.raises(DescriptorError, match=match) as info:
        learn_projection(vectors, labels)
    assert isinstance(info.value, FastimgError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "lmnn"}, r"unknown projection method 'lmnn'; expected one of \['lda', 'nca'\]"),
    ({"method": "lda", "max_iter": 3}, r"takes the options \['shrinkage'\]; got unknown \['max_iter'\]"),
    ({"method": "lda", "shrinkage": 1.5}, r"shrinkage must be a number in \[0, 1\]"),
    ({"method": "lda", "dim": 0}, "dim must be a positive int"),
    ({"method": "lda", "dim": 99}, r"dim=99 is larger than the vectors' dimension D \(5\)"),
    ({"method": "nca", "init": "random"}, "nca init must be one of"),
    ({"method": "nca", "max_iter": 0}, "max_iter must be an int >= 1"),
    ({"method": "nca", "tol": -1.0}, "tol must be a finite number > 0"),
])
def test_bad_options_are_clear_errors(kwargs, match):
    x, y = blobs(n=30, d=5, classes=3)
    with pytest.raises(DescriptorError, match=match):
        learn_projection(x, y, **kwargs)


def test_nca_pca_start_is_limited_by_the_samples():
    x = np.random.default_rng(0).normal(size=(4, 5))
    with pytest.raises(DescriptorError, match=r"init 'pca' gives at most 4 axes \(min\(n, D\)\); got dim=5"):
        learn_projection(x, [0, 0, 1, 1], method="nca", init="pca", dim=5)


def test_encode_labels_in_order_of_first_appearance():
    codes, classes = encode_labels(["b", "a", None, "b", 3, (1, 2), float("nan")])
    assert classes == ["b", "a", 3, (1, 2)]
    assert codes.tolist() == [0, 1, -1, 0, 2, 3, -1]


def test_methods_table_lists_the_defaults_used():
    x, y = blobs(n=60, d=5, classes=3)
    p = learn_projection(x, y)
    assert p.method == "lda" and p.params["shrinkage"] == METHODS["lda"]["shrinkage"]
    assert p.output_dim == 2 and p.normalize  # n_classes - 1
    q = learn_projection(x, y, method="nca", max_iter=np.int64(3), seed=np.int32(1), tol=np.float32(1e-4))
    assert (q.params["max_iter"], q.params["seed"]) == (3, 1)  # numpy scalars accepted, stored as JSON
    assert q.output_dim == 5 and q.params["init"] == METHODS["nca"]["init"]  # min(D, 64)


# --------------------------------------------------------------------------- LinearProjection
def test_transform_is_centre_project_normalise():
    rng = np.random.default_rng(0)
    mean, mat = rng.normal(size=7), rng.normal(size=(3, 7))
    p = LinearProjection(mean, mat, method="test")
    x = rng.normal(size=(20, 7))
    z = (x - mean) @ mat.T
    np.testing.assert_allclose(p.transform(x), z / np.linalg.norm(z, axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(p.transform(x, normalize=False), z, rtol=1e-6)
    assert p.transform(x).dtype == np.float32
    np.testing.assert_allclose(p.transform(x[4]), p.transform(x)[4])
    assert np.isnan(p.transform(np.full((1, 7), np.nan))).all()
    with pytest.raises(DescriptorError, match=r"dimension 7; got an array of shape \(2, 6\)"):
        p.transform(np.zeros((2, 6)))


def test_save_load_round_trip_without_pickle(tmp_path):
    x, y = blobs(n=60, d=5, classes=3)
    p = learn_projection(x, y, method="lda", dim=2, normalize=False)
    f = tmp_path / "p.npz"
    p.save(f)
    with np.load(f, allow_pickle=False) as z:  # every field is a plain array
        assert all(z[k].dtype != object for k in z.files)
    q = LinearProjection.load(f)
    assert isinstance(load_projection(f), LinearProjection)
    np.testing.assert_array_equal(q.matrix_, p.matrix_)
    np.testing.assert_array_equal(q.mean_, p.mean_)
    assert (q.method, q.params, q.normalize, q.n_fit_) == (p.method, p.params, p.normalize, p.n_fit_)
    np.testing.assert_array_equal(q.transform(x), p.transform(x))


def test_load_errors_and_dispatch(tmp_path):
    w = PCAWhitening(dim=3).fit(np.random.default_rng(0).normal(size=(30, 6)))
    w.save(tmp_path / "w.npz")
    assert isinstance(load_projection(tmp_path / "w.npz"), PCAWhitening)
    with pytest.raises(DescriptorError, match="not a fastimg LinearProjection file"):
        LinearProjection.load(tmp_path / "w.npz")
    with pytest.raises(DescriptorError, match="file not found"):
        load_projection(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(DescriptorError, match="neither a fastimg PCAWhitening nor a LinearProjection"):
        load_projection(tmp_path / "other.npz")
    p = LinearProjection(np.zeros(4), np.eye(2, 4))
    p.save(tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz") as z:
        fields = {k: z[k] for k in z.files}
    np.savez(tmp_path / "bad.npz", **{**fields, "matrix": np.eye(2, 5)})
    with pytest.raises(DescriptorError, match=r"bad.npz: projection matrix must have shape \(d, 4\)"):
        LinearProjection.load(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DescriptorError, match="not a projection .npz file"):
        LinearProjection.load(tmp_path / "junk.npz")


def test_constructor_checks():
    with pytest.raises(DescriptorError, match=r"shape \(d, 3\)"):
        LinearProjection(np.zeros(3), np.zeros((2, 4)))
    with pytest.raises(DescriptorError, match="finite"):
        LinearProjection(np.zeros(2), np.array([[np.nan, 0.0]]))
    with pytest.raises(DescriptorError, match="JSON-serialisable"):
        LinearProjection(np.zeros(2), np.eye(2), params={"a": object()})


def test_whitening_as_linear_is_the_same_map():
    x = np.random.default_rng(2).normal(size=(50, 8)) * np.linspace(0.5, 3, 8)
    for kw in ({"dim": 4}, {"power": 0.5}):
        w = PCAWhitening(**kw).fit(x)
        lin = w.as_linear()
        assert lin.method == "pca-whitening" and lin.n_fit_ == 50
        np.testing.assert_allclose(lin.transform(x), w.transform(x), atol=1e-6)
        np.testing.assert_allclose(lin.transform(x, normalize=False), w.transform(x, normalize=False), rtol=1e-6)


# --------------------------------------------------------------------------- splits
def test_split_by_image_is_stratified_disjoint_and_deterministic():
    y = np.repeat(["a", "b", "c", "d"], [10, 7, 2, 1])
    tr, te = split_labels(y, 0.5, seed=3)
    assert np.intersect1d(tr, te).size == 0
    assert np.array_equal(np.union1d(tr, te), np.arange(y.size))
    counts = {c: (int((y[tr] == c).sum()), int((y[te] == c).sum())) for c in "abcd"}
    assert counts == {"a": (5, 5), "b": (4, 3), "c": (1, 1), "d": (1, 0)}  # round(3.5) = 4; singleton -> train
    tr2, te2 = split_labels(list(y), 0.5, seed=3)
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)
    assert not np.array_equal(tr, split_labels(y, 0.5, seed=4)[0])
    tr3, _ = split_labels(y, 0.9, seed=0)
    assert int((y[tr3] == "a").sum()) == 9 and int((y[tr3] == "c").sum()) == 1  # one left for the test part


def test_split_by_class_holds_whole_classes_out():
    y = np.repeat(np.arange(10), 4)
    tr, te = split_labels(y, 0.5, by="class", seed=0)
    assert np.intersect1d(np.unique(y[tr]), np.unique(y[te])).size == 0
    assert np.unique(y[tr]).size == 5 and np.unique(y[te]).size == 5
    assert np.array_equal(np.union1d(tr, te), np.arange(40)) and np.intersect1d(tr, te).size == 0
    seen = {tuple(np.unique(y[split_labels(y, 0.5, by="class", seed=s)[0]])) for s in range(10)}
    assert len(seen) > 1
    assert np.unique(y[split_labels(y, 0.01, by="class")[0]]).size == 1  # clipped to [1, C - 1]


def test_split_excludes_unlabelled_and_checks_arguments():
    y = [0, 0, None, 1, 1, float("nan")]
    tr, te = split_labels(y)
    assert sorted(np.concatenate([tr, te]).tolist()) == [0, 1, 3, 4]
    for kw, match in (({"train_fraction": 1.0}, "strictly between 0 and 1"), ({"by": "group"}, "'image' or 'class'"),
                      ({"seed": 1.5}, "seed must be an int")):
        with pytest.raises(DescriptorError, match=match):
            split_labels(y, **kw)
    with pytest.raises(DescriptorError, match="at least 2 classes"):
        split_labels([1, 1, 1], by="class")


# --------------------------------------------------------------------------- package
def test_exported_lazily_and_import_stays_light():
    assert fastimg.learn_projection is learn_projection and fastimg.split_labels is split_labels
    assert fastimg.LinearProjection is LinearProjection
    code = ("import sys, fastimg; fastimg.learn_projection; fastimg.LinearProjection; "
            "print(','.join(m for m in ('scipy', 'sklearn', 'cv2', 'numba') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
