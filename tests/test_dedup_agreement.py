"""fastimg.dedup's photometric agreement (``same_photo=True``, the default of ``verify="orb"``).

Oracles: the agreement is recomputed here with SciPy (Gaussian filter, bilinear
``map_coordinates`` through the inverse transform, ``np.corrcoef`` over the overlap); the
duplicates are known by construction - an edited copy of a generated picture is one photo,
two renderings of one generated scene whose objects moved (the same background, seen from
the same spot) are two photos of one scene (a burst).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage

from fastimg import FastimgError
from fastimg.dedup import (
    VERIFY_MIN_AGREEMENT,
    VERIFY_MIN_INLIERS,
    VERIFY_MIN_INLIERS_SCENE,
    DedupError,
    ImageSignature,
    find_duplicates,
    image_signature,
    match_transform,
    photometric_agreement,
    verify_pair,
)
from fastimg.index import Index

from _photos import textured_scene

BIN = Path(sys.executable).with_name("fastimg")


def _background(seed: int, h: int = 256, w: int = 384) -> np.ndarray:
    """A textured backdrop with corners to match (:func:`_photos.textured_scene`, 45 smaller shapes)."""
    return textured_scene(seed, h, w, shapes=45, max_side=50, max_radius=25)


def _render(seed: int, positions: list[tuple[int, int]]) -> np.ndarray:
    """The scene ``seed`` with its three "animals" (flat ellipses) at ``positions``."""
    img = _background(seed)
    for n, (x, y) in enumerate(positions):
        cv2.ellipse(img, (x, y), (34, 22), 10 * n, 0, 360, (30 + 70 * n, 200 - 50 * n, 120), -1)
    return img


HERD = [(80, 70), (250, 90), (170, 190)]
MOVED = [(105, 80), (270, 110), (150, 185)]  # the next shot: each animal a step further


def _edits(img: np.ndarray) -> dict[str, np.ndarray]:
    h, w = img.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), 4.0, 1.12)
    return {"resize": cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA),
            "q30": cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 30])[1], cv2.IMREAD_COLOR),
            "crop": np.ascontiguousarray(img[11:11 + round(0.9 * h), 17:17 + round(0.9 * w)]),
            "dark": np.clip(img.astype(np.float32) * 0.8, 0, 255).astype(np.uint8),
            "rotate": cv2.warpAffine(img, rot, (w, h), borderMode=cv2.BORDER_REFLECT_101)}


def _oracle_agreement(a: ImageSignature, b: ImageSignature, m: np.ndarray) -> float:
    """Pearson's r of b's blurred thumbnail and a's, sampled (bilinear) where b's pixels come
    from under ``m``, over the pixels whose source is at least 1 px inside a's thumbnail."""
    ha, wa = a.thumb.shape
    hb, wb = b.thumb.shape
    sa = np.diag([wa / a.size[0], ha / a.size[1], 1.0])
    sb = np.diag([wb / b.size[0], hb / b.size[1], 1.0])
    full = sb @ np.vstack([m, [0, 0, 1]]) @ np.linalg.inv(sa)  # a's thumbnail pixels -> b's
    inv = np.linalg.inv(full)
    blur_a = ndimage.gaussian_filter(a.thumb.astype(np.float64), 1.0, mode="mirror", truncate=4.0)
    blur_b = ndimage.gaussian_filter(b.thumb.astype(np.float64), 1.0, mode="mirror", truncate=4.0)
    ys, xs = np.mgrid[0:hb, 0:wb].astype(np.float64)
    src_x = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    src_y = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    inside = (src_x >= 1) & (src_x <= wa - 2) & (src_y >= 1) & (src_y <= ha - 2)
    sampled = ndimage.map_coordinates(blur_a, [src_y[inside], src_x[inside]], order=1)
    return float(np.corrcoef(sampled, blur_b[inside])[0, 1])


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    t = math.radians(angle_deg)
    return np.array([[scale * math.cos(t), -scale * math.sin(t), tx], [scale * math.sin(t), scale * math.cos(t), ty]])


@pytest.mark.parametrize("m", [_similarity(0, 1, 0, 0), _similarity(4, 1.1, -20, 5), _similarity(-3, 0.8, 30, 12),
                               _similarity(0, 1, 95, 40)])
def test_agreement_is_the_ncc_of_the_warped_overlap(m):
    """Any transform (an identity, rotations with scale, a large shift: a partial overlap),
    between a picture and a burst of it: photometric_agreement equals the SciPy oracle."""
    a = image_signature(_render(3, HERD))
    b = image_signature(_render(3, MOVED))
    got = photometric_agreement(a, b, m)
    want = _oracle_agreement(a, b, m)
    assert got == pytest.approx(want, abs=2e-3)
    assert -1.0 <= got <= 1.0


def test_agreement_under_the_fitted_transform_and_its_invariances():
    """With match_transform's own transform (a rotated copy): the oracle agrees; a linear change
    of the grey levels (brightness and contrast) leaves the correlation unchanged."""
    img = _render(4, HERD)
    edited = _edits(img)["rotate"]
    a, b = image_signature(img), image_signature(edited)
    n, m = match_transform(a, b)
    assert n >= VERIFY_MIN_INLIERS
    assert photometric_agreement(a, b, m) == pytest.approx(_oracle_agreement(a, b, m), abs=2e-3)
    relit = ImageSignature(b.points, b.descriptors, b.dct_hash, b.size, (b.thumb.astype(np.float64) * 0.5 + 40))
    assert photometric_agreement(a, relit, m) == pytest.approx(photometric_agreement(a, b, m), abs=1e-6)  # float32 blur


def test_too_small_an_overlap_and_flat_images_agree_zero():
    a = image_signature(_render(5, HERD))
    assert photometric_agreement(a, a, _similarity(0, 1, 300, 0)) == 0.0  # 20 of 320 px overlap: < 10 %
    flat = ImageSignature(a.points, a.descriptors, a.dct_hash, a.size, np.full_like(a.thumb, 128))
    assert photometric_agreement(a, flat, _similarity(0, 1, 0, 0)) == 0.0
    with pytest.raises(DedupError, match="thumbnail"):
        photometric_agreement(a, ImageSignature(a.points, a.descriptors, a.dct_hash, a.size), _similarity(0, 1, 0, 0))


@pytest.mark.parametrize("edit", ["resize", "q30", "crop", "dark", "rotate"])
def test_an_edited_copy_agrees_and_is_accepted(edit):
    a = image_signature(_render(6, HERD))
    b = image_signature(_edits(_render(6, HERD))[edit])
    n, agreement = verify_pair(a, b)
    assert n >= VERIFY_MIN_INLIERS and agreement >= VERIFY_MIN_AGREEMENT
    assert agreement == pytest.approx(_oracle_agreement(a, b, match_transform(a, b)[1]), abs=2e-3)


def test_a_burst_matches_geometrically_but_disagrees_in_pixels():
    """Same background from the same spot, the animals moved: enough inliers for the loose
    rule (the backdrop lines up), an agreement below the strict one (the animals moved)."""
    n, agreement = verify_pair(image_signature(_render(7, HERD)), image_signature(_render(7, MOVED)))
    assert n >= max(VERIFY_MIN_INLIERS, VERIFY_MIN_INLIERS_SCENE)
    assert agreement < VERIFY_MIN_AGREEMENT


@pytest.fixture(scope="module")
def burst_index(tmp_path_factory):
    """Two scenes: each photographed twice (the animals moved between the shots), the first
    shot of each with two edited copies; and two unrelated pictures."""
    root = tmp_path_factory.mktemp("burst")
    for s in (10, 11):
        first = _render(s, HERD)
        cv2.imwrite(str(root / f"s{s}_shot1.png"), first)
        cv2.imwrite(str(root / f"s{s}_shot2.png"), _render(s, MOVED))
        for name in ("crop", "dark"):
            cv2.imwrite(str(root / f"s{s}_shot1_{name}.png"), _edits(first)[name])
    for s in (20, 21):
        cv2.imwrite(str(root / f"other{s}.png"), _background(s))
    ix = tmp_path_factory.mktemp("burstix") / "ix"
    with Index.create(ix, descriptor="hsv72") as index:
        assert index.add(root, workers=1).added == 10
    return ix


def _named_groups(groups) -> list[list[str]]:
    return sorted(sorted(Path(p).name for p in g.paths) for g in groups)


def test_same_photo_groups_copies_and_same_scene_groups_bursts(burst_index):
    """Default (same_photo=True): each first shot with its two edits, the second shots alone;
    same_photo=False: the second shot joins its scene's group (bursts grouped, as before)."""
    copies = [[f"s{s}_shot1.png", f"s{s}_shot1_crop.png", f"s{s}_shot1_dark.png"] for s in (10, 11)]
    with Index.open(burst_index) as index:
        strict = find_duplicates(index, workers=1)
        loose = index.duplicates(same_photo=False, workers=1)
        lenient = find_duplicates(index, workers=1, min_agreement=0.0)
    assert _named_groups(strict) == sorted(sorted(g) for g in copies)
    assert _named_groups(loose) == sorted(sorted(g + [g[0].replace("shot1", "shot2")]) for g in copies)
    assert _named_groups(lenient) == _named_groups(loose)  # an agreement test that accepts anything
    for p in (p for g in strict for p in g.pairs):
        assert p.inliers >= VERIFY_MIN_INLIERS and p.agreement >= VERIFY_MIN_AGREEMENT
    assert all(p.agreement is None and p.inliers >= VERIFY_MIN_INLIERS_SCENE for g in loose for p in g.pairs)


def test_the_cli_flag_matches_the_library(burst_index):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN), "dedup", "--index", str(burst_index), "--workers", "1", *args],
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)

    strict, loose = run("--json"), run("--json", "--same-scene")
    assert strict.returncode == 0 and loose.returncode == 0, strict.stderr + loose.stderr
    names = [sorted(sorted(Path(g["path"]).name for g in grp) for grp in json.loads(r.stdout)["groups"])
             for r in (strict, loose)]
    with Index.open(burst_index) as index:
        assert names == [_named_groups(find_duplicates(index, workers=1)),
                         _named_groups(find_duplicates(index, workers=1, same_photo=False))]
    assert all(p["agreement"] >= VERIFY_MIN_AGREEMENT for p in json.loads(strict.stdout)["pairs"])
    text = run()
    assert f"agreement >= {VERIFY_MIN_AGREEMENT:g}" in text.stdout
    bad = run("--same-scene", "--min-agreement", "0.9")
    assert bad.returncode == 2 and "--min-agreement" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("kwargs, match", [
    ({"same_photo": "yes"}, "same_photo must be True or False"),
    ({"min_agreement": 1.5}, "min_agreement must be a number from -1 to 1"),
    ({"min_agreement": float("nan")}, "min_agreement must be a number from -1 to 1"),
    ({"min_agreement": True}, "min_agreement must be a number from -1 to 1"),
    ({"min_agreement": "0.9"}, "min_agreement must be a number from -1 to 1"),
    ({"same_photo": False, "min_agreement": 0.9}, "applies to same_photo=True only"),
    ({"verify": "none", "threshold": 0.1, "min_agreement": 0.9}, "applies to verify='orb' only"),
])
def test_bad_agreement_arguments(burst_index, kwargs, match):
    with Index.open(burst_index) as index:
        with pytest.raises(DedupError, match=match) as info:
            find_duplicates(index, workers=1, **kwargs)
    assert isinstance(info.value, FastimgError) and isinstance(info.value, ValueError)
