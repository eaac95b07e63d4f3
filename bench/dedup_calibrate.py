"""Calibrate fastimg.dedup's default thresholds on a generated near-duplicate set (issue 21 item 5).

The one command (writes its section of bench/quality.md, between its markers)::

    FASTIMG_BENCH_SCALE=full nice .venv/bin/python bench/dedup_calibrate.py --check

(No benchmark lock: nothing here is timed, and ``nice`` leaves the CPU to timed runs; ``--verify``
times its cost line, so its published run goes under the lock.)

The set (written under ``--work``, default /tmp/fastimg-dedup-calib; never committed):
every Corel-1k image (``--originals`` of them per run, default all 1000) plus five
edits of each, each edit isolating one change (lossless PNG except the JPEG one):

* ``resize50`` - half the width and height (``cv2.INTER_AREA``);
* ``jpeg30``   - re-encoded as JPEG, quality 30;
* ``crop90``   - 90 % of the width and of the height, at a random offset;
* ``bright20`` - pixel values x 1.2 or x 0.8 (random sign), clipped;
* ``rotate``   - rotated by 3-5 degrees (random sign) about the centre and enlarged just
  enough to leave no empty corner (a photo editor's "straighten").

An original and its edits form a group.  The target pairs are an original and one of its
edits (5 per group: what a collection with a copy of a photo holds, and what links the group:
``fastimg.dedup`` groups connected components).  The 10 pairs of two edits of one image
(say the rotated one and the darkened one) are duplicates too but two changes apart: their
recall is reported, and they count neither as true nor as false pairs.  Every pair of two
groups is false - among them the other photos of the same class (the 100 beaches, the 100
dinosaurs on white ...), which must not be grouped.

Held out: the groups are split in two halves, half of each class in each (seeded).  The
threshold is chosen on the first half's collection (its originals with their edits, all of
its pairs) and recall / precision are reported on the second half's collection, which the
choice never saw; figures for the whole set (both halves, not held out) show how precision
falls as a collection grows (false pairs grow with the square of its size).

Choice (on the tuning half): among the thresholds reaching recall >= 0.95 and precision
>= 0.99, the one with the best F1; when none reaches both, the best F1 overall (the table
says so, with the recall at precision >= 0.99).  The value written is the coarsest round
number that keeps the tuning half's decisions (no pair of the tuning half between the
chosen pair score and it).

Scores: the library's exact search (``fastimg.search.ExactSearcher``, float64 re-scoring of
the candidates) gives each image's ``--k`` nearest neighbours; every negative pair closer
than the farthest of those (the "cap") is therefore counted, and thresholds are only
considered below the cap (a choice at the cap is reported).  The true pairs are scored
directly (``fastimg.metrics.exact_scores``).  For an asymmetric metric a pair's score is
its better direction, as in ``fastimg.dedup``.

Peer: ``imagehash.phash`` (64-bit DCT hash, Hamming distance; the ``bench`` extra),
thresholded the same held-out way.  (imagededup's PHash would need torch.)

``--check``: after the defaults are in fastimg.dedup, build an index of the held-out half
per descriptor, run ``fastimg.find_duplicates(index)`` with its default threshold and check
that it returns exactly the pairs counted here.

``FASTIMG_BENCH_SCALE=tiny`` (a smoke run: 60 Corel images, hsv72 and classic, no file
written unless --out is given), ``small`` (the classic descriptors), ``full`` (also
cnn-crow).  ``--descriptors`` names any others (e.g. an ``effnet-*`` one).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import REPO, SHARED_DATA, pick, scale  # noqa: E402

BEGIN = "<!-- dedup_calibrate.py: begin (generated; the rest of the file is quality.py's) -->"
END = "<!-- dedup_calibrate.py: end -->"
EDITS = ("resize50", "jpeg30", "crop90", "bright20", "rotate")
RECALL, PRECISION = 0.95, 0.99
CLASSIC = ["hsv72", "rgb64", "rgb512", "hsv", "spatial-hsv72", "spatial-hsv", "correlogram", "lbp", "ehd",
           "cedd", "classic", "classic-fast"]
DESCRIPTORS = pick(["hsv72", "classic"], CLASSIC, CLASSIC + ["cnn-crow"])
#: fastimg.dedup's defaults before this calibration (per metric), for the "before" column
BEFORE = {"pearson": 0.99, "cosine": 0.99, "bhattacharyya": 0.1, "l1": 0.05, "intersect": 0.975}


def log(s: str) -> None:
    print(s, flush=True)  # a script, not library code


# --------------------------------------------------------------------------- #
# the set
# --------------------------------------------------------------------------- #

def _edits(img: np.ndarray, rng: np.random.Generator) -> dict:
    """name -> (extension, image) for one original (BGR uint8)."""
    import cv2

    h, w = img.shape[:2]
    out = {"resize50": (".png", cv2.resize(img, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)),
           "jpeg30": (".jpg", img)}
    ch, cw = round(0.9 * h), round(0.9 * w)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out["crop90"] = (".png", np.ascontiguousarray(img[y:y + ch, x:x + cw]))
    factor = 1.2 if rng.random() < 0.5 else 0.8
    out["bright20"] = (".png", np.clip(img.astype(np.float32) * factor + 0.5, 0, 255).astype(np.uint8))
    angle = float(rng.uniform(3.0, 5.0)) * (1 if rng.random() < 0.5 else -1)
    t = math.radians(abs(angle))
    zoom = math.cos(t) + max(w / h, h / w) * math.sin(t)  # the rotated frame covers the image: no empty corner
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, zoom)
    out["rotate"] = (".png", cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101))
    return out


def build_set(corel: Path, work: Path, originals: int, seed: int) -> list[dict]:
    """Rows ``{"path", "group", "edit", "class", "half"}``: every listed Corel image (group =
    its position), plus the edits of the first ``originals`` of them (evenly over classes)."""
    import cv2

    with open(corel / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows.sort(key=lambda r: r["path"])
    by_class: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_class.setdefault(r["class_name"], []).append(i)
    per_class = pick(6, None, None)  # tiny: a few images per class
    if per_class is not None:
        keep = sorted(i for ids in by_class.values() for i in ids[:per_class])
        rows = [rows[i] for i in keep]
        by_class = {}
        for i, r in enumerate(rows):
            by_class.setdefault(r["class_name"], []).append(i)
    rng = np.random.default_rng(seed)
    half = np.zeros(len(rows), dtype=np.int8)
    edited: set[int] = set()
    share = min(1.0, originals / len(rows))
    for cls in sorted(by_class):
        ids = np.array(by_class[cls])
        rng.shuffle(ids)
        half[ids[len(ids) // 2:]] = 1
        edited.update(int(i) for i in ids[:round(share * len(ids))])
    tag = hashlib.blake2b(json.dumps([seed, sorted(edited), [r["path"] for r in rows]]).encode(),
                          digest_size=6).hexdigest()
    out_dir = work / f"set-{tag}"
    listing = out_dir / "set.json"
    if listing.is_file():
        return json.loads(listing.read_text())
    items = []
    for g, r in enumerate(rows):
        src = corel / r["path"]
        items.append({"path": str(src), "group": g, "edit": "original", "class": r["class_name"], "half": int(half[g])})
        if g not in edited:
            continue
        img = cv2.imread(str(src), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"dedup_calibrate.py: cannot read {src}")
        for name, (ext, im) in _edits(img, np.random.default_rng([seed, g])).items():
            dest = out_dir / Path(r["path"]).with_suffix("").as_posix().replace("/", "__")
            dest = dest.with_name(f"{dest.name}__{name}{ext}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            params = [cv2.IMWRITE_JPEG_QUALITY, 30] if ext == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
            if not cv2.imwrite(str(dest), im, params):
                raise SystemExit(f"dedup_calibrate.py: cannot write {dest}")
            items.append({"path": str(dest), "group": g, "edit": name, "class": r["class_name"],
                          "half": int(half[g])})
    listing.write_text(json.dumps(items))
    return items


def features(items: list[dict], name: str, work: Path) -> tuple[np.ndarray, dict]:
    """The descriptor's rows for every item (cached under ``work``) and its spec."""
    from fastimg.features.registry import describe_many, get_descriptor

    d = get_descriptor(name)
    spec = d.spec() if hasattr(d, "spec") else {"name": d.name, "params": d.params}
    paths = [it["path"] for it in items]
    key = hashlib.blake2b(json.dumps([spec, paths], sort_keys=True, default=str).encode(), digest_size=8).hexdigest()
    cache = work / "features" / f"{name}-{key}.npy"
    if cache.is_file():
        return np.load(cache), spec
    t0 = time.perf_counter()
    x, errors = describe_many(paths, d, workers=os.cpu_count(), progress=False)
    if errors:
        first = next(iter(errors.items()))
        raise SystemExit(f"dedup_calibrate.py: {len(errors)} images failed with {name}, e.g. {paths[first[0]]}: "
                         f"{first[1]}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, x)
    log(f"  described {len(paths)} images with {name} in {time.perf_counter() - t0:.0f}s")
    return x, spec


# --------------------------------------------------------------------------- #
# pair scores
# --------------------------------------------------------------------------- #

def _orient(metric, s):
    """Scores as distances: a pair is a duplicate when this is <= the (oriented) threshold."""
    s = np.asarray(s, dtype=np.float64)
    return -s if metric.higher_is_better else s


def _group_keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    return np.minimum(a, b) * 1_000_000 + np.maximum(a, b)


def pair_scores(x: np.ndarray, metric_name: str, members: np.ndarray, groups: np.ndarray, edits: np.ndarray,
                k: int, same_shot: np.ndarray = np.zeros(0, np.int64)) -> dict:
    """Oriented scores of the true pairs and of the negative pairs closer than the cap, within
    the collection ``x[members]``.  ``edits`` names each row's edit ("original", ...)."""
    from fastimg.metrics import exact_scores, get_metric
    from fastimg.search import ExactSearcher

    m = get_metric(metric_name)
    sub = np.ascontiguousarray(x[members])
    g = groups[members]
    n = len(members)
    kk = min(n, k + 1)  # the row itself is among its own neighbours
    ids, scores = ExactSearcher(sub, m).search(sub, kk)
    d = _orient(m, scores)
    cap = math.inf if kk >= n else float(d[:, -1].min())
    rows = np.repeat(np.arange(n), kk)
    cols = ids.ravel()
    dd = d.ravel()
    keep = rows != cols
    lo, hi, dd = np.minimum(rows, cols)[keep], np.maximum(rows, cols)[keep], dd[keep]
    order = np.lexsort((dd, hi, lo))  # per pair, its better direction first
    lo, hi, dd = lo[order], hi[order], dd[order]
    first = np.ones(lo.size, dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    lo, hi, dd = lo[first], hi[first], dd[first]
    sub_edits = edits[members]
    false = (g[lo] != g[hi]) & ~np.isin(_group_keys(g[lo], g[hi]), same_shot)  # same-shot pairs: neither way
    neg = dd[false]
    neg_oo = dd[false & (sub_edits[lo] == "original") & (sub_edits[hi] == "original")]
    # true pairs, scored directly in both directions
    pos, pos_kind = [], []
    order = np.argsort(g, kind="stable")
    starts = np.flatnonzero(np.r_[True, g[order][1:] != g[order][:-1]])
    for s, e in zip(starts, np.r_[starts[1:], n]):
        grp = order[s:e]
        if grp.size < 2:
            continue
        sm = np.stack([_orient(m, exact_scores(m, sub[i], sub[grp])) for i in grp])
        best = np.minimum(sm, sm.T)
        for a in range(grp.size):
            for b in range(a + 1, grp.size):
                pos.append(best[a, b])
                ea, eb = sub_edits[grp[a]], sub_edits[grp[b]]
                pos_kind.append(eb if ea == "original" else ea if eb == "original" else "edit~edit")
    return _scored(np.array(pos), np.array(pos_kind), np.sort(neg), np.sort(neg_oo), cap, n)


def hamming_scores(hashes: np.ndarray, members: np.ndarray, groups: np.ndarray, edits: np.ndarray,
                   same_shot: np.ndarray = np.zeros(0, np.int64)) -> dict:
    """The same for 64-bit hashes and the Hamming distance (every pair: no cap)."""
    h = hashes[members]
    g = groups[members]
    e = edits[members]
    n = len(members)
    pos, kind, neg, neg_oo = [], [], [], []
    for i in range(n - 1):
        dist = np.bitwise_count(h[i] ^ h[i + 1:]).astype(np.float64)
        same = g[i + 1:] == g[i]
        false = ~same & ~np.isin(_group_keys(g[i + 1:], np.full(n - i - 1, g[i])), same_shot)
        neg.append(dist[false])
        if e[i] == "original":
            neg_oo.append(dist[false & (e[i + 1:] == "original")])
        for j in np.flatnonzero(same):
            pos.append(dist[j])
            ea, eb = e[i], e[i + 1 + j]
            kind.append(eb if ea == "original" else ea if eb == "original" else "edit~edit")
    return _scored(np.array(pos), np.array(kind), np.sort(np.concatenate(neg)), np.sort(np.concatenate(neg_oo)),
                   math.inf, n)


def _scored(pos: np.ndarray, kind: np.ndarray, neg: np.ndarray, neg_oo: np.ndarray, cap: float, n: int) -> dict:
    """``pos``: the target pairs (an original and one of its edits); ``pos_all`` adds the
    pairs of two edits of one image (reported, not targeted: neither true nor false);
    ``neg``: the false pairs' scores, sorted; ``neg_oo``: those of two Corel originals."""
    target = kind != "edit~edit"
    return {"pos": pos[target], "pos_all": pos, "pos_kind": kind, "neg": neg, "neg_oo": neg_oo, "cap": cap, "n": n}


# --------------------------------------------------------------------------- #
# the choice
# --------------------------------------------------------------------------- #

def at(sc: dict, t: float) -> dict:
    """Recall, precision, F1 at oriented threshold ``t`` (duplicate when score <= t)."""
    tp = int(np.count_nonzero(sc["pos"] <= t))
    fp = int(np.searchsorted(sc["neg"], t, side="right"))
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / sc["pos"].size
    return {"recall": r, "precision": p, "f1": 2 * p * r / (p + r) if p + r else 0.0, "tp": tp, "fp": fp,
            "fp_originals": int(np.searchsorted(sc["neg_oo"], t, side="right")), "capped": t >= sc["cap"]}


def _round_between(lo: float, hi: float) -> float:
    """The coarsest number with few significant digits in [lo, hi)."""
    if not math.isfinite(hi):
        hi = lo + max(abs(lo), 1.0)
    for digits in range(1, 10):
        if lo == 0:
            return 0.0
        step = 10.0 ** (math.floor(math.log10(abs(lo))) - digits + 1)
        v = math.ceil(lo / step - 1e-9) * step
        v = float(f"{v:.{digits + 2}g}")
        if lo <= v < hi:
            return v
    return lo


def choose(sc: dict) -> dict:
    """The oriented thresholds chosen on one collection's scores: ``t`` (precision first: the
    best F1 among the thresholds with precision >= PRECISION; ``met`` when its recall reaches
    RECALL) and ``t_f1`` (the best F1 overall, for comparison)."""
    cand = np.unique(np.concatenate([sc["pos"], sc["neg"]]))
    cand = cand[cand < sc["cap"]]
    pos = np.sort(sc["pos"])
    tp = np.searchsorted(pos, cand, side="right")
    fp = np.searchsorted(sc["neg"], cand, side="right")
    r = tp / pos.size
    p = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    ok_p = p >= PRECISION
    i = int(np.argmax(np.where(ok_p, f1, -1.0))) if ok_p.any() else int(np.argmax(f1))
    j = int(np.argmax(f1))

    def value(k: int) -> float:
        return _round_between(float(cand[k]), float(cand[k + 1]) if k + 1 < cand.size else sc["cap"])

    return {"t": value(i), "met": bool(ok_p[i] and r[i] >= RECALL), "t_f1": value(j),
            "at_cap": max(i, j) + 1 == cand.size and math.isfinite(sc["cap"])}


def recall_at_precision(sc: dict) -> float:
    cand = np.unique(sc["pos"])
    cand = cand[cand < sc["cap"]]
    best = 0.0
    for t in cand:
        a = at(sc, t)
        if a["precision"] >= PRECISION:
            best = max(best, a["recall"])
    return best


# --------------------------------------------------------------------------- #
# the run
# --------------------------------------------------------------------------- #

def _evaluate(name: str, metric, tune: dict, test: dict, whole: dict) -> dict:
    c = choose(tune)
    t = c["t"]
    sign = -1 if metric.higher_is_better else 1
    row = {"descriptor": name, "metric": metric.name, "oriented": t,
           "threshold": sign * t, "met_on_tuning": c["met"], "at_cap": c["at_cap"],
           "tune": at(tune, t), "test": at(test, t), "whole": at(whole, t),
           "f1_threshold": sign * c["t_f1"], "f1_test": at(test, c["t_f1"]), "f1_whole": at(whole, c["t_f1"]),
           "test_recall_at_p": recall_at_precision(test), "n_test": test["n"], "n_whole": whole["n"],
           "pos_test": int(test["pos"].size)}
    row["per_edit"] = {e: float(np.mean(test["pos_all"][test["pos_kind"] == e] <= t))
                       for e in (*EDITS, "edit~edit") if np.any(test["pos_kind"] == e)}
    row["test_all_pairs_recall"] = float(np.mean(test["pos_all"] <= t))
    before = BEFORE.get(metric.name)
    if before is not None:
        row["before"] = {"threshold": before, **at(test, -before if metric.higher_is_better else before)}
    return row


def _check_library(row: dict, x: np.ndarray, items: list[dict], members: np.ndarray, test: dict) -> str:
    """find_duplicates on an index of the held-out half at the calibrated threshold: the same
    pairs as counted here (true, false, and the edit~edit pairs counted neither way)."""
    from fastimg.dedup import default_threshold, find_duplicates
    from fastimg.index import Index

    with tempfile.TemporaryDirectory() as tmp:
        with Index.create(Path(tmp) / "ix", descriptor=row["descriptor"], metric=row["metric"]) as ix:
            ix.add_vectors(x[members], [items[i]["path"] for i in members])
            t = default_threshold(ix)
            pairs = {(p.a, p.b) for g in find_duplicates(ix, threshold=row["threshold"]) for p in g.pairs}
    got = len(pairs)
    edit_edit = int(np.count_nonzero(test["pos_all"][test["pos_kind"] == "edit~edit"] <= row["oriented"]))
    want = row["test"]["tp"] + row["test"]["fp"] + edit_edit
    if got != want:
        raise SystemExit(f"dedup_calibrate.py: {row['descriptor']}: find_duplicates found {got} pairs, "
                         f"the scores here {want}")
    default = ("the library's default" if t == row["threshold"] else
               f"library default {t}: update fastimg.dedup.THRESHOLDS" if t is not None else "no library default yet")
    return f"find_duplicates: {got} pairs, as counted ({default})"


def _phash(items: list[dict], work: Path) -> np.ndarray:
    from concurrent.futures import ThreadPoolExecutor

    import imagehash
    from PIL import Image

    paths = [it["path"] for it in items]
    key = hashlib.blake2b(json.dumps([imagehash.__version__, paths]).encode(), digest_size=8).hexdigest()
    cache = work / "features" / f"phash-{key}.npy"
    if cache.is_file():
        return np.load(cache)

    def one(p: str) -> int:
        with Image.open(p) as im:
            bits = imagehash.phash(im).hash.ravel()
        return int("".join("1" if b else "0" for b in bits), 2)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        out = np.array(list(pool.map(one, paths)), dtype=np.uint64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, out)
    return out


def _fmt_rp(a: dict) -> str:
    return f"{a['recall']:.3f} / {a['precision']:.3f}" + (" (capped)" if a.get("capped") else "")


def _op(r: dict) -> str:
    return "≥" if r["higher"] else "≤"


def _markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "## Near-duplicate thresholds: `fastimg.dedup` defaults (issue 21)",
        "",
        f"Produced by `{meta['command']}` (scale `{meta['scale']}`, {meta['seconds']:.0f} s, fastimg "
        f"{meta['commit']}, Python {platform.python_version()}, {platform.machine()}; shared 2-core machine, "
        f"load average {meta['load0']:.2f} at the start, {meta['load1']:.2f} at the end: times only, the "
        "figures do not depend on it).  Protocol: the docstring of `bench/dedup_calibrate.py`.  In short: "
        f"{meta['groups']} Corel-1k images each with 5 edits (resize 50 %, JPEG q30, 90 % crop, ±20 % "
        "brightness, 3-5° rotation); an original and one of its edits are a true pair (5 per image), a pair "
        "across two images is false (other photos of the same class included); two edits of one image count "
        "neither way (their recall is in the second table).  The threshold is chosen on half of the images "
        f"(half of each class; {meta['n_tune']} files with the edits): precision first - the best F1 among "
        f"the thresholds with precision ≥ {PRECISION} - and measured on the other half ({meta['n_test']} files, "
        f"{meta['pos_test']} true pairs), which the choice never saw.  *Whole set*: both halves together "
        f"({meta['n_whole']} files, the tuning half included): precision falls as a collection grows (false "
        "pairs grow with the square of its size, true ones with its size).",
        "",
        f"| descriptor | metric | default | held-out recall | held-out precision | held-out F1 | false pairs "
        f"(two originals) | tuning half R / P | whole set R / P | recall ≥ {RECALL} at precision ≥ {PRECISION} |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        te = r["test"]
        target = "yes" if te["recall"] >= RECALL and te["precision"] >= PRECISION else (
            "on the tuning half only" if r["met_on_tuning"] else "**no**")
        lines.append(f"| {r['descriptor']} | {r['metric']} | {_op(r)} {r['threshold']:.8g} | {te['recall']:.3f} | "
                     f"{te['precision']:.3f} | {te['f1']:.3f} | {te['fp']} ({te['fp_originals']}) | "
                     f"{_fmt_rp(r['tune'])} | {_fmt_rp(r['whole'])} | {target} |")
    lines += [
        "",
        "Held-out recall at the default by kind of pair (an original and its edit; `edit~edit`: two edits of "
        "one image; `all 15`: every pair of a group), and the defaults before this calibration (one value per "
        "metric, whatever the descriptor) on the same held-out half:",
        "",
        "| descriptor | " + " | ".join(EDITS) + " | edit~edit | all 15 | before | before: R / P |",
        "|---|" + "---:|" * (len(EDITS) + 4),
    ]
    for r in rows:
        pe = r["per_edit"]
        b = r.get("before")
        before = f"{_op(r)} {b['threshold']:g} | {_fmt_rp(b)}" if b else "none | -"
        lines.append(f"| {r['descriptor']} | " + " | ".join(f"{pe.get(e, float('nan')):.3f}" for e in EDITS)
                     + f" | {pe.get('edit~edit', float('nan')):.3f} | {r['test_all_pairs_recall']:.3f} | {before} |")
    lines += [
        "",
        "For comparison, the threshold with the best F1 on the tuning half, precision regardless (not the "
        "default: its false pairs grow fastest with the collection):",
        "",
        "| descriptor | metric | best-F1 threshold | held-out R / P | whole set R / P |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['descriptor']} | {r['metric']} | {_op(r)} {r['f1_threshold']:g} | "
                     f"{_fmt_rp(r['f1_test'])} | {_fmt_rp(r['f1_whole'])} |")
    if meta.get("checks"):
        lines += ["", "Library check (`--check`): " + "; ".join(f"{d}: {c}" for d, c in meta["checks"].items())
                  + "."]
    notes = meta.get("notes", "").strip()
    if notes:
        lines += ["", notes]
    return "\n".join(lines) + "\n"


def write_section(out: Path, section: str) -> None:
    text = out.read_text() if out.is_file() else ""
    block = f"{BEGIN}\n{section.rstrip()}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    out.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--descriptors", nargs="+", default=None, metavar="NAME",
                    help=f"descriptors, each with its default metric or as NAME:METRIC (default: {DESCRIPTORS})")
    ap.add_argument("--originals", type=int, default=1000, help="originals that get edits (default: all)")
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--k", type=int, default=256, help="neighbours per image scored (default 256)")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "fastimg-dedup-calib"))
    ap.add_argument("--no-peer", action="store_true", help="skip imagehash's pHash")
    ap.add_argument("--check", action="store_true", help="check find_duplicates' defaults on the held-out half")
    ap.add_argument("--out", default=None, help="markdown file (default bench/quality.md; tiny: stdout only)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON")
    ap.add_argument("--verify", action="store_true",
                    help="evaluate fastimg.dedup's verify='orb' default (its own section of quality.md)")
    ap.add_argument("--render-verify", action="store_true",
                    help="only write the --verify section again from the last --verify run (under --work)")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="only write the section again from a --json file of an earlier run")
    args = ap.parse_args(argv)
    if args.render_verify:
        render_verify(Path(args.work), Path(args.out) if args.out else REPO / "bench" / "quality.md")
        return 0
    if args.render:
        render(Path(args.render), Path(args.out) if args.out else REPO / "bench" / "quality.md")
        return 0

    from fastimg.features.registry import get_descriptor
    from fastimg.metrics import get_metric

    corel = SHARED_DATA / "corel1k"
    if not corel.is_dir():
        sys.exit(f"dedup_calibrate.py: dataset not found: {corel} (expected beside the repository in ../shared/data)")
    out = Path(args.out) if args.out else (None if scale() == "tiny" else REPO / "bench" / "quality.md")
    work = Path(args.work)
    t_all = time.perf_counter()
    load0 = os.getloadavg()[0]
    items = build_set(corel, work, args.originals, args.seed)
    if args.verify:
        return main_verify(args, items, work, out)
    groups = np.array([it["group"] for it in items])
    edits = np.array([it["edit"] for it in items])
    half = np.array([it["half"] for it in items])
    tune_m, test_m, all_m = np.flatnonzero(half == 0), np.flatnonzero(half == 1), np.arange(len(items))
    log(f"set: {len(items)} images ({len(set(groups.tolist()))} groups), tuning half {tune_m.size}, "
        f"held-out half {test_m.size}")

    rows, checks = [], {}
    for entry in (args.descriptors or DESCRIPTORS):
        name, _, metric_name = entry.partition(":")
        d = get_descriptor(name)
        metric = get_metric(metric_name or d.default_metric)
        t0 = time.perf_counter()
        x, spec = features(items, name, work)
        sc = [pair_scores(x, metric.name, m, groups, edits, args.k) for m in (tune_m, test_m, all_m)]
        row = _evaluate(name, metric, *sc)
        row["higher"] = metric.higher_is_better
        row["spec"] = {"version": spec.get("version"), "params": spec.get("params", {})}
        rows.append(row)
        log(f"  {name:14s} {metric.name:13s} T={row['threshold']:<9g} held-out R/P "
            f"{row['test']['recall']:.3f}/{row['test']['precision']:.3f}  tuning {row['tune']['recall']:.3f}/"
            f"{row['tune']['precision']:.3f}  whole {row['whole']['recall']:.3f}/{row['whole']['precision']:.3f}"
            f"{'  AT CAP: raise --k' if row['at_cap'] else ''}  ({time.perf_counter() - t0:.0f}s)")
        if args.check:
            checks[name] = _check_library(row, x, items, test_m, sc[1])
            log(f"    {checks[name]}")

    if not args.no_peer:
        t0 = time.perf_counter()
        h = _phash(items, work)
        sc = [hamming_scores(h, m, groups, edits) for m in (tune_m, test_m, all_m)]
        row = _evaluate("imagehash phash (peer)", get_metric("l1"), *sc)  # distance orientation
        row.update(metric="hamming", higher=False)
        row.pop("before", None)
        rows.append(row)
        log(f"  phash          hamming       T={row['threshold']:<9g} held-out R/P {row['test']['recall']:.3f}/"
            f"{row['test']['precision']:.3f}  ({time.perf_counter() - t0:.0f}s)")

    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    meta = {"command": f"FASTIMG_BENCH_SCALE={scale()} nice .venv/bin/python "
                       "bench/dedup_calibrate.py" + (" --check" if args.check else ""),
            "scale": scale(), "seconds": time.perf_counter() - t_all, "commit": commit, "load0": load0,
            "load1": os.getloadavg()[0], "groups": int(np.count_nonzero(edits == "resize50")),
            "n_tune": int(tune_m.size), "n_test": int(test_m.size), "n_whole": len(items),
            "pos_test": rows[0]["pos_test"] if rows else 0, "checks": checks,
            "notes": NOTES if scale() == "full" else ""}
    md = _markdown(rows, meta)
    if out is not None:
        write_section(out, md)
        log(f"wrote {out}")
    else:
        print(md)
    from fastimg.dedup import _params_digest

    ours = [r for r in rows if "spec" in r]
    log("fastimg.dedup.THRESHOLDS:\n" + "\n".join(
        f'    ("{r["descriptor"]}", "{r["metric"]}"): {r["threshold"]!r},' for r in ours))
    log("fastimg.dedup._CALIBRATED:\n" + "\n".join(
        f'    "{r["descriptor"]}": ({r["spec"]["version"]}, "{_params_digest(r["spec"]["params"])}"),' for r in ours))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "meta": meta}, indent=1, default=_jsonable))
    return 0


def _jsonable(v):
    return bool(v) if isinstance(v, np.bool_) else float(v)


def render(path: Path, out: Path) -> None:
    """Write the section again from a ``--json`` file (with the current NOTES), no recomputation."""
    from fastimg.dedup import THRESHOLDS

    doc = json.loads(path.read_text())
    meta = {**doc["meta"], "notes": NOTES if doc["meta"]["scale"] == "full" else ""}
    checks = dict(meta.get("checks") or {})
    for r in doc["rows"]:  # the library's defaults may have been filled in since the run
        if r["descriptor"] in checks and THRESHOLDS.get((r["descriptor"], r["metric"])) == r["threshold"]:
            checks[r["descriptor"]] = checks[r["descriptor"]].split(" (")[0] + " (the library's default)"
    meta["checks"] = checks
    write_section(out, _markdown(doc["rows"], meta))
    log(f"wrote {out}")



# --------------------------------------------------------------------------- #
# --verify: candidates + ORB verification (fastimg.dedup's default)
# --------------------------------------------------------------------------- #

VERIFY_BEGIN = "<!-- dedup_calibrate.py --verify: begin (generated) -->"
VERIFY_END = "<!-- dedup_calibrate.py --verify: end -->"
SAME_SHOT = REPO / "bench" / "dedup_same_shot.txt"
VERIFY_DESCRIPTORS = pick(["hsv72"], ["hsv72", "classic"], ["hsv72", "classic", "cnn-crow"])


def load_same_shot(items: list[dict]) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Group-pair keys of the Corel originals listed in bench/dedup_same_shot.txt (two photos of
    one shot: counted neither as true nor as false pairs), and the listed pairs."""
    group_of = {it["path"].split("corel1k/", 1)[-1]: it["group"] for it in items if it["edit"] == "original"}
    pairs, keys = [], []
    for line in SAME_SHOT.read_text().splitlines():
        line = line.split("#", 1)[0].split()
        if len(line) != 2:
            continue
        if line[0] in group_of and line[1] in group_of:
            pairs.append((line[0], line[1]))
            keys.append(int(_group_keys(group_of[line[0]], group_of[line[1]])))
    return np.array(sorted(set(keys)), dtype=np.int64), pairs


def _verify_params() -> dict:
    import cv2

    import fastimg.dedup as dd

    return {"side": dd.VERIFY_SIDE, "features": dd.VERIFY_FEATURES, "ratio": dd._RATIO, "reproj": dd._REPROJ,
            "iters": dd._RANSAC_ITERS, "scales": list(dd._SCALES), "one_to_one": True, "cv2": cv2.__version__,
            "thumb": dd.VERIFY_THUMB_SIDE, "blur": dd._BLUR, "min_overlap": dd._MIN_OVERLAP, "margin": 1}


def _signature_params() -> dict:
    p = _verify_params()
    return {k: p[k] for k in ("side", "features", "cv2", "thumb")}


def signatures(items: list[dict], work: Path) -> list:
    """fastimg.dedup.image_signature of every item (cached under ``work``)."""
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    from fastimg.dedup import image_signature

    paths = [it["path"] for it in items]
    key = hashlib.blake2b(json.dumps([_signature_params(), paths]).encode(), digest_size=8).hexdigest()
    cache = work / "features" / f"orbsig-{key}.pkl"
    if cache.is_file():
        return pickle.loads(cache.read_bytes())
    t0 = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        out = list(pool.map(image_signature, paths))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps(out))
    log(f"  signatures of {len(paths)} images in {time.perf_counter() - t0:.0f}s")
    return out


def pair_checks(pairs: list[tuple[int, int]], sigs: list, items: list[dict], work: Path) -> dict:
    """``{(i, j): fastimg.dedup.verify_pair}`` (inliers, agreement) for the pairs (cached under ``work``)."""
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    from fastimg.dedup import verify_pair

    key = hashlib.blake2b(json.dumps([_verify_params(), [it["path"] for it in items]]).encode(),
                          digest_size=8).hexdigest()
    cache = work / "features" / f"checks-{key}.pkl"
    done: dict = pickle.loads(cache.read_bytes()) if cache.is_file() else {}
    todo = [p for p in pairs if p not in done]
    if todo:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(os.cpu_count()) as pool:
            got = list(pool.map(lambda p: verify_pair(sigs[p[0]], sigs[p[1]]), todo))
        done.update(zip(todo, got))
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(pickle.dumps(done))
        log(f"  matched {len(todo)} pairs in {time.perf_counter() - t0:.0f}s")
    return {p: done[p] for p in pairs}


def _knn_pairs(x: np.ndarray, metric_name: str, members: np.ndarray, c: int) -> set:
    from fastimg.metrics import get_metric
    from fastimg.search import ExactSearcher

    sub = np.ascontiguousarray(x[members])
    ids, _ = ExactSearcher(sub, get_metric(metric_name)).search(sub, min(len(members), c + 1))
    out = set()
    for r, row in enumerate(ids):
        for j in row:
            if j >= 0 and j != r:
                a, b = int(members[r]), int(members[j])
                out.add((a, b) if a < b else (b, a))
    return out


def _hash_candidate_pairs(sigs: list, members: np.ndarray, bits: int) -> set:
    from fastimg.dedup import hash_pairs

    hp = hash_pairs([sigs[i].dct_hash for i in members], bits)
    return {(int(members[i]), int(members[j])) for i, j in hp}


class _Pairs:
    """The candidate pairs of one half as arrays: inliers, agreement and what each pair is."""

    def __init__(self, pairs: set, chk: dict, groups, edits, same_shot, n_targets: int):
        arr = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
        self.a, self.b = arr[:, 0], arr[:, 1]
        self.cnt = np.array([chk[(int(i), int(j))][0] for i, j in arr], dtype=np.int64)
        self.agr = np.array([chk[(int(i), int(j))][1] for i, j in arr], dtype=np.float64)
        same = groups[self.a] == groups[self.b]
        self.target = same & ((edits[self.a] == "original") | (edits[self.b] == "original"))
        self.burst = ~same & np.isin(_group_keys(groups[self.a], groups[self.b]), same_shot)
        self.false = ~same & ~self.burst
        self.edit_edit = same & ~self.target
        self.oo = self.false & (edits[self.a] == "original") & (edits[self.b] == "original")
        self.kind = np.where(edits[self.a] == "original", edits[self.b], edits[self.a])
        self.n_targets, self.n = n_targets, len(pairs)

    def accepted(self, n: int, agree: Optional[float]) -> np.ndarray:
        acc = self.cnt >= n
        return acc if agree is None else acc & (self.agr >= agree)

    def verdicts(self, n: int, agree: Optional[float]) -> dict:
        """Recall / precision of 'candidate, inliers >= n (and agreement >= agree)'."""
        acc = self.accepted(n, agree)
        tp = int(np.count_nonzero(self.target & acc))
        fp = int(np.count_nonzero(self.false & acc))
        fb = int(np.count_nonzero(self.burst & acc))
        r = tp / self.n_targets
        p_loose = tp / (tp + fp) if tp + fp else 1.0
        p_strict = tp / (tp + fp + fb) if tp + fp + fb else 1.0
        per_edit = {e: float(np.count_nonzero(self.target & acc & (self.kind == e)) / (self.n_targets / len(EDITS)))
                    for e in EDITS}
        f1 = 2 * p_strict * r / (p_strict + r) if p_strict + r else 0.0
        return {"recall": r, "precision_loose": p_loose, "precision_strict": p_strict, "f1_strict": f1,
                "f1_loose": 2 * p_loose * r / (p_loose + r) if p_loose + r else 0.0, "tp": tp, "fp": fp,
                "fp_burst": fb, "fp_originals": int(np.count_nonzero(self.oo & acc)), "per_edit": per_edit,
                "edit_edit": int(np.count_nonzero(self.edit_edit & acc)),
                "candidate_recall": int(np.count_nonzero(self.target)) / self.n_targets, "candidates": self.n}


AGREEMENTS = np.round(np.arange(0.900, 1.0, 0.001), 3)  # the thresholds T tried (None: no agreement test)


def _choose(pp: _Pairs, strict: bool, agreements) -> tuple[int, Optional[float], dict]:
    """The rule ``(N, T)`` with precision >= PRECISION (``strict``: bursts counted as false) and the
    best F1; a plateau of equal F1 gives its middle T, then the middle N at that T (margins)."""
    key, fkey = ("precision_strict", "f1_strict") if strict else ("precision_loose", "f1_loose")
    f1: dict = {}
    for t in agreements:
        for n in range(1, 201):
            v = pp.verdicts(n, t)
            if v[key] >= PRECISION:
                f1[(n, t)] = round(v[fkey], 6)
    if not f1:
        return 200, None, {}
    top = max(f1.values())
    ties = [nt for nt, v in f1.items() if v == top]
    ts = sorted({t for _, t in ties}, key=lambda t: -1 if t is None else t)
    t = ts[len(ts) // 2]
    ns = sorted(n for n, tt in ties if tt == t)
    n = ns[len(ns) // 2]
    span = {"f1": top, "t_range": [ts[0], ts[-1]], "n_range": [ns[0], ns[-1]]}
    return n, t, span


def _timing(items: list[dict], sigs: list, pairs: list, n_img: int = 200, n_pairs: int = 2000) -> dict:
    """Single-thread cost: image_signature per image (read + decode + ORB + hash + thumbnail),
    match_transform per pair, photometric_agreement per pair."""
    from fastimg.dedup import image_signature, match_transform, photometric_agreement

    step = max(1, len(items) // n_img)
    sample = [items[i]["path"] for i in range(0, len(items), step)][:n_img]
    t0 = time.perf_counter()
    for p_ in sample:
        image_signature(p_)
    t_img = (time.perf_counter() - t0) / len(sample)
    rng = np.random.default_rng(0)
    some = [pairs[i] for i in rng.choice(len(pairs), min(n_pairs, len(pairs)), replace=False)]
    t0 = time.perf_counter()
    ms = [match_transform(sigs[a], sigs[b])[1] for a, b in some]
    t_pair = (time.perf_counter() - t0) / len(some)
    with_m = [(p, m) for p, m in zip(some, ms) if m is not None]
    t0 = time.perf_counter()
    for (a, b), m in with_m:
        photometric_agreement(sigs[a], sigs[b], m)
    t_agr = (time.perf_counter() - t0) / max(1, len(with_m))
    return {"ms_per_image": 1000 * t_img, "ms_per_pair": 1000 * t_pair, "ms_agreement": 1000 * t_agr,
            "n_img": len(sample), "n_pairs": len(some), "n_agr": len(with_m),
            "thumb_bytes": float(np.mean([s.thumb.nbytes for s in sigs])),
            "kp_bytes": float(np.mean([s.points.nbytes + s.descriptors.nbytes for s in sigs]))}


def _distribution(pp: _Pairs, n: int, items: list[dict], groups, edits) -> dict:
    """Agreement of the pairs with >= n inliers (whole set): edits per kind, bursts, other false pairs;
    the closest bursts / false pairs and the least agreeing edits (names)."""
    orig_of = {it["group"]: it["path"].split("corel1k/", 1)[-1] for it in items if it["edit"] == "original"}

    def name(i: int) -> str:
        return orig_of[groups[i]] + ("" if edits[i] == "original" else f" ({edits[i]})")

    sel = pp.cnt >= n
    out: dict = {"n": n, "edits": {}, "closest": [], "lowest": []}
    for e in EDITS:
        v = pp.agr[sel & pp.target & (pp.kind == e)]
        out["edits"][e] = {"count": int(v.size), "min": float(v.min()), "p1": float(np.percentile(v, 1)),
                           "median": float(np.median(v))}
    for label, m in (("bursts", pp.burst), ("other false", pp.false)):
        v = pp.agr[sel & m]
        out[label] = {"count": int(v.size), "max": float(v.max()) if v.size else None,
                      "p99": float(np.percentile(v, 99)) if v.size else None,
                      "median": float(np.median(v)) if v.size else None}
    for i in np.argsort(-np.where(sel & (pp.burst | pp.false), pp.agr, -9))[:6]:
        if sel[i] and (pp.burst[i] or pp.false[i]):
            out["closest"].append([name(pp.a[i]), name(pp.b[i]), int(pp.cnt[i]), float(pp.agr[i]),
                                   "burst" if pp.burst[i] else "false"])
    for i in np.argsort(np.where(sel & pp.target, pp.agr, 9))[:4]:
        out["lowest"].append([name(pp.a[i]), name(pp.b[i]), int(pp.cnt[i]), float(pp.agr[i])])
    return out


def main_verify(args, items: list[dict], work: Path, out: Optional[Path]) -> int:
    import fastimg.dedup as dd
    from fastimg.features.registry import get_descriptor
    from fastimg.metrics import get_metric

    t_all = time.perf_counter()
    load0 = os.getloadavg()[0]
    groups = np.array([it["group"] for it in items])
    edits = np.array([it["edit"] for it in items])
    half = np.array([it["half"] for it in items])
    halves = {"tune": np.flatnonzero(half == 0), "test": np.flatnonzero(half == 1)}
    targets = {h: int(np.count_nonzero(edits[m] != "original")) for h, m in halves.items()}
    same_shot, listed = load_same_shot(items)
    sigs = signatures(items, work)
    c, bits = dd.VERIFY_CANDIDATES, dd.VERIFY_HASH_BITS
    names = args.descriptors or VERIFY_DESCRIPTORS
    feats, metrics, cand = {}, {}, {}
    for h, mem in halves.items():
        cand[("hash", h)] = _hash_candidate_pairs(sigs, mem, bits)
    for name in names:
        d = get_descriptor(name)
        metrics[name] = get_metric(d.default_metric)
        feats[name] = features(items, name, work)[0]
        for h, mem in halves.items():
            cand[(name, h)] = _knn_pairs(feats[name], metrics[name].name, mem, c) | cand[("hash", h)]
    union = {h: set().union(*(cand[(n, h)] for n in names)) for h in halves}
    chk = pair_checks(sorted(union["tune"] | union["test"]), sigs, items, work)

    def pairs_of(key_set: set, h: str) -> _Pairs:
        return _Pairs(key_set, chk, groups, edits, same_shot, targets[h])

    tune = pairs_of(union["tune"], "tune")
    # the rules, all chosen on the tuning half (every descriptor's candidates together)
    n_s, t_s, span_s = _choose(tune, True, list(AGREEMENTS))         # strict: bursts false, N and T
    n_l, _, span_l = _choose(tune, False, [None])                    # loose: inliers alone, bursts not counted
    n_i, _, span_i = _choose(tune, True, [None])                     # strict with inliers alone
    log(f"  chosen: strict N={n_s} T={t_s} {span_s}; loose N={n_l} {span_l}; inliers-only strict N={n_i}")
    rules = [("verify", n_s, t_s, True), ("verify-loose", n_l, None, False), ("verify-inliers", n_i, None, True)]
    rows = []
    for kind, n, t, strict in rules:
        for name in names:
            v = {h: pairs_of(cand[(name, h)], h).verdicts(n, t) for h in halves}
            rows.append({"descriptor": name, "metric": metrics[name].name, "kind": kind, "n": n, "t": t,
                         "strict": strict, **v})
            log(f"  {name:10s} {kind:15s} N={n} T={t}: held-out R {v['test']['recall']:.3f} P strict "
                f"{v['test']['precision_strict']:.3f} loose {v['test']['precision_loose']:.3f} per edit "
                f"{v['test']['per_edit']}")
    for name in names:  # the score rule at the library's calibrated default, same halves
        m = metrics[name]
        thr = dd.THRESHOLDS.get((name, m.name))
        if thr is None:
            continue
        o = -thr if m.higher_is_better else thr
        sc = {h: pair_scores(feats[name], m.name, mem, groups, edits, args.k, same_shot) for h, mem in halves.items()}
        strict = {h: at(pair_scores(feats[name], m.name, mem, groups, edits, args.k), o)["precision"]
                  for h, mem in halves.items()}
        rows.append({"descriptor": name, "metric": m.name, "kind": "score", "threshold": thr,
                     "higher": m.higher_is_better, **{h: at(sc[h], o) for h in halves}, "strict_p": strict,
                     "per_edit": {e: float(np.mean(sc["test"]["pos_all"][sc["test"]["pos_kind"] == e] <= o))
                                  for e in EDITS}})
    if not args.no_peer:
        hashes = _phash(items, work)
        sc = {h: hamming_scores(hashes, mem, groups, edits, same_shot) for h, mem in halves.items()}
        ch = choose(sc["tune"])
        strict = {h: at(hamming_scores(hashes, mem, groups, edits), ch["t"])["precision"]
                  for h, mem in halves.items()}
        rows.append({"descriptor": "imagehash phash (peer)", "metric": "hamming", "kind": "score",
                     "threshold": ch["t"], "higher": False, **{h: at(sc[h], ch["t"]) for h in halves},
                     "strict_p": strict,
                     "per_edit": {e: float(np.mean(sc["test"]["pos_all"][sc["test"]["pos_kind"] == e] <= ch["t"]))
                                  for e in EDITS}})
    whole = _Pairs(union["tune"] | union["test"], chk, groups, edits, same_shot,
                   targets["tune"] + targets["test"])
    dist = _distribution(whole, n_s, items, groups, edits)
    for r in dist["closest"]:
        log(f"  closest not-a-copy pair: {r[0]} ~ {r[1]}  inliers {r[2]} agreement {r[3]:.4f} ({r[4]})")
    check = None
    lib = {"min_inliers": dd.VERIFY_MIN_INLIERS, "min_agreement": dd.VERIFY_MIN_AGREEMENT,
           "min_inliers_scene": dd.VERIFY_MIN_INLIERS_SCENE}
    if args.check and (lib["min_inliers"], lib["min_agreement"]) == (n_s, t_s):
        check = _check_verified(names[0], feats[names[0]], metrics[names[0]].name, items, halves["test"],
                                pairs_of(cand[(names[0], "test")], "test"), n_s, t_s)
        log(f"  {check}")
    timing = _timing(items, sigs, sorted(union["test"]))
    meta = {"seconds": time.perf_counter() - t_all, "load0": load0, "load1": os.getloadavg()[0],
            "rules": {"strict": [n_s, t_s, span_s], "loose": [n_l, None, span_l], "inliers": [n_i, None, span_i]},
            "candidates": c, "hash_bits": bits, "listed": listed, "targets": targets,
            "n": {h: int(m.size) for h, m in halves.items()}, "timing": timing, "params": _verify_params(),
            "library": lib, "check": check, "distribution": dist}
    meta["scale"], meta["commit"] = scale(), _commit()
    (work / "verify-last.json").write_text(json.dumps({"rows": rows, "meta": meta}, default=_jsonable))
    md = _verify_markdown(rows, meta)
    if out is not None:
        _write_block(out, VERIFY_BEGIN, VERIFY_END, md)
        log(f"wrote {out}")
    else:
        print(md)
    if (lib["min_inliers"], lib["min_agreement"], lib["min_inliers_scene"]) != (n_s, t_s, n_l):
        log(f"NOTE: chosen N={n_s}, T={t_s}, loose N={n_l} != fastimg.dedup's VERIFY_MIN_INLIERS "
            f"{lib['min_inliers']}, VERIFY_MIN_AGREEMENT {lib['min_agreement']}, VERIFY_MIN_INLIERS_SCENE "
            f"{lib['min_inliers_scene']}: update them")
    return 0


def _check_verified(name: str, x: np.ndarray, metric: str, items: list[dict], members: np.ndarray,
                    pp: _Pairs, n: int, t: float) -> str:
    """fastimg.find_duplicates (its default, verify="orb", same_photo=True) on an index of the
    held-out half (the cached vectors, the real file paths): the same pairs as counted here."""
    from fastimg.dedup import find_duplicates
    from fastimg.index import Index

    acc = pp.accepted(n, t)
    want = {(int(a), int(b)) for a, b in zip(pp.a[acc], pp.b[acc])}
    with tempfile.TemporaryDirectory() as tmp:
        with Index.create(Path(tmp) / "ix", descriptor=name, metric=metric) as ix:
            ix.add_vectors(x[members], [items[i]["path"] for i in members])
            got = {(int(members[p.a]), int(members[p.b])) for g in find_duplicates(ix) for p in g.pairs}
    if got != want:
        return (f"{name}: find_duplicates found {len(got)} pairs, counted here {len(want)} "
                f"({len(got - want)} only in the library, {len(want - got)} only here: ties among neighbours)")
    return f"{name}: find_duplicates (default, verify='orb', same_photo=True) returns the {len(got)} pairs counted here"


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def render_verify(work: Path, out: Path) -> None:
    """Write the --verify section again from the last run's JSON (with the current VERIFY_NOTES)."""
    doc = json.loads((work / "verify-last.json").read_text())
    _write_block(out, VERIFY_BEGIN, VERIFY_END, _verify_markdown(doc["rows"], doc["meta"]))
    log(f"wrote {out}")


def _rule_text(r: dict) -> str:
    if r["kind"] == "score":
        return f"score {'≥' if r['higher'] else '≤'} {r['threshold']:.8g}"
    text = f"≥ {r['n']} inliers" + (f" and agreement ≥ {r['t']:.3f}" if r["t"] is not None else "")
    return text + {"verify": " (**default**, `same_photo=True`)", "verify-loose": " (`same_photo=False`)",
                   "verify-inliers": " (inliers alone, *N* chosen with bursts false)"}[r["kind"]]


def _verify_markdown(rows: list[dict], meta: dict) -> str:
    tm = meta["timing"]
    (n_s, t_s, span_s), (n_l, _, span_l), (n_i, _, _) = (meta["rules"][k] for k in ("strict", "loose", "inliers"))
    lines = [
        "## Near-duplicates with verification: `fastimg.dedup`'s default (`verify=\"orb\"`)",
        "",
        f"Produced by `FASTIMG_BENCH_SCALE={meta['scale']} /work/tools/bench .venv/bin/python bench/dedup_calibrate.py "
        f"--verify{' --check' if meta.get('check') else ''}` (fastimg {meta['commit']}, {meta['seconds']:.0f} s with "
        f"cached descriptors, Python {platform.python_version()}, OpenCV {meta['params']['cv2']}; load average "
        f"{meta['load0']:.2f} at the start, {meta['load1']:.2f} at the end; the machine is shared).  Same set and "
        f"halves as above (held-out half: {meta['n']['test']} files, {meta['targets']['test']} true pairs).  A pair "
        f"is a candidate when one image is among the other's {meta['candidates']} nearest neighbours (the "
        f"descriptor's metric) or their 64-bit DCT hashes differ in ≤ {meta['hash_bits']} bits; a candidate is "
        "a duplicate when ≥ *N* ORB matches (ratio test 0.8) fit one similarity transform (RANSAC, 4 px at 320 px) "
        f"and, with `same_photo=True` (the default), the photometric agreement is ≥ *T*: the zero-mean normalised "
        f"cross-correlation of the two {meta['params']['thumb']} px grey thumbnails (Gaussian blur σ "
        f"{meta['params']['blur']:g} px) over their overlap, one warped onto the other by the fitted transform.",
        "",
        f"Ground truth: a duplicate is one photo and its edits.  {len(meta['listed'])} pairs of Corel-1k originals "
        "are two photos of one scene from one spot, moments apart (`bench/dedup_same_shot.txt`, a burst, looked "
        "at on a contact sheet): with `same_photo=True` they and their edits' pairs count as **false** "
        "(\"strict\"); the `same_photo=False` rule is chosen with them counted neither as true nor as false "
        "(\"bursts not counted\"), as before.  Each rule is chosen on the tuning half (every descriptor's "
        f"candidates together): precision ≥ {PRECISION} first, then the best F1, the middle of a plateau.  "
        f"Chosen: **`same_photo=True`: N = {n_s}, T = {t_s:.3f}** (the tuning half's F1 is the same for T from "
        f"{span_s['t_range'][0]:.3f} to {span_s['t_range'][1]:.3f}); `same_photo=False`: N = {n_l}; inliers alone "
        f"under the strict reading: N = {n_i}.  Library: `VERIFY_MIN_INLIERS = {meta['library']['min_inliers']}`, "
        f"`VERIFY_MIN_AGREEMENT = {meta['library']['min_agreement']}`, `VERIFY_MIN_INLIERS_SCENE = "
        f"{meta['library']['min_inliers_scene']}`.",
        "",
        f"| descriptor | rule | held-out recall | held-out precision (strict) | F1 (strict) | precision, bursts not "
        f"counted | false pairs accepted (bursts) | tuning R / P (strict) | {' | '.join(EDITS)} | candidates "
        f"(their recall) | recall ≥ {RECALL} at precision ≥ {PRECISION} (strict) |",
        "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(EDITS) + "---:|---|",
    ]
    for r in rows:
        te, tu = r["test"], r["tune"]
        if r["kind"] == "score":
            p_strict, p_loose, p_tune = r["strict_p"]["test"], te["precision"], r["strict_p"]["tune"]
            f1 = 2 * p_strict * te["recall"] / (p_strict + te["recall"]) if p_strict + te["recall"] else 0.0
            fps, per, cands = f"{te['fp']} (-)", r["per_edit"], "-"
        else:
            p_strict, p_loose, p_tune, f1 = (te["precision_strict"], te["precision_loose"],
                                             tu["precision_strict"], te["f1_strict"])
            fps, per = f"{te['fp'] + te['fp_burst']} ({te['fp_burst']})", te["per_edit"]
            cands = f"{te['candidates'] / meta['n']['test']:.2f} per image ({te['candidate_recall']:.3f})"
        ok = "**yes**" if te["recall"] >= RECALL and p_strict >= PRECISION else "no"
        lines.append(f"| {r['descriptor']} | {_rule_text(r)} | {te['recall']:.3f} | {p_strict:.3f} | {f1:.3f} | "
                     f"{p_loose:.3f} | {fps} | {tu['recall']:.3f} / {p_tune:.3f} | "
                     + " | ".join(f"{per[e]:.3f}" for e in EDITS) + f" | {cands} | {ok} |")
    d = meta["distribution"]
    lines += [
        "",
        f"Agreement of the candidate pairs with ≥ {d['n']} inliers (both halves; the rule's second test):",
        "",
        "| pairs | count | lowest | 1st percentile | median | highest |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for e, v in d["edits"].items():
        lines.append(f"| original ~ {e} | {v['count']} | {v['min']:.4f} | {v['p1']:.4f} | {v['median']:.4f} | - |")
    for label in ("bursts", "other false"):
        v = d[label]
        if v["count"]:
            lines.append(f"| {label} (two photos) | {v['count']} | - | - | {v['median']:.4f} | {v['max']:.4f} |")
        else:
            lines.append(f"| {label} (two photos) | 0 | - | - | - | - |")
    lines += ["", "Closest pairs that are not copies (≥ N inliers, highest agreement): "
              + "; ".join(f"`{a}` ~ `{b}` ({k} inliers, {g:.4f}, {what})" for a, b, k, g, what in d["closest"])
              + ".  Least agreeing copies: "
              + "; ".join(f"`{a}` ~ `{b}` ({k} inliers, {g:.4f})" for a, b, k, g in d["lowest"]) + "."]
    lines += [
        "",
        f"Cost (one thread, measured in this run): `image_signature` (read, decode, grey 320 px, 500 ORB "
        f"keypoints, DCT hash, {meta['params']['thumb']} px thumbnail) {tm['ms_per_image']:.1f} ms per image "
        f"({tm['n_img']} images); `match_transform` {tm['ms_per_pair']:.2f} ms per candidate pair ({tm['n_pairs']} "
        f"pairs) and `photometric_agreement` {tm['ms_agreement']:.3f} ms more per pair it is run on (the library "
        f"runs it on the pairs with ≥ N inliers; timed on the {tm['n_agr']} of those pairs with a transform); a collection of n images costs n signatures + one match per "
        "candidate pair (per image: the candidates column), on top of the exact neighbour search.  Memory while it "
        f"runs: {tm['kp_bytes'] / 1024:.1f} KB of keypoints and descriptors and {tm['thumb_bytes'] / 1024:.1f} KB "
        "of thumbnail per image (the image is decoded once).",
    ]
    if meta.get("check"):
        lines += ["", f"Library check (`--check`): {meta['check']}."]
    notes = meta.get("notes") or VERIFY_NOTES
    if notes and meta["scale"] == "full":
        lines += ["", notes]
    return "\n".join(lines) + "\n"


def _write_block(out: Path, begin: str, end: str, section: str) -> None:
    text = out.read_text() if out.is_file() else ""
    block = f"{begin}\n{section.rstrip()}\n{end}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    out.write_text(text)


VERIFY_NOTES = """\
**The target of issue 21 (recall ≥ 0.95 at precision ≥ 0.99) is met held out under the strict reading - a
duplicate is one photo and its edits, a burst shot of the same scene is a false pair - whatever the index's
descriptor**: recall 0.997 at precision 1.000 for `hsv72`, `classic` and `cnn-crow` (no false pair and no
burst pair among the 3000 held-out files), each edit kind 0.994-0.998.  Inliers alone could not do it: the
bursts have up to 175 inliers, and the best inlier count for the strict reading (*N* = 97) gives 0.982 at
0.987.  Pixels separate them: among the pairs with ≥ 29 inliers, every copy agrees ≥ 0.9899 (the lowest: a
rotated and a cropped copy, where the resampling and the overlap's edge cost a little), every burst pair
≤ 0.9661 (animals, people and water moved, parallax), so *T* could be anywhere from 0.964 to 0.990 on the tuning half; 0.977 is the
middle.  With the agreement test doing that work, *N* falls to 29 (the tuning half is perfect for *N* from
12 to 45), which finds a few more copies than 35 (held out: resize 0.994 → 0.998, rotate 0.994 → 0.996).
The misses (3 per 500 of the crops, 1-2 of
the other kinds) are copies of nearly featureless photos (e.g. `beaches/db_089`, flat sea and sand: 21
keypoints), where no 29 matches exist.  The closest pair of two unrelated photos has 24 inliers and
agreement 0.88 (`people_and_villages_in_Africa/db_839` and `db_841`, one man photographed twice).

`same_photo=False` (`--same-scene`) keeps the earlier rule, inliers alone with *N* = 35 (chosen with the
bursts counted neither way): it groups the bursts (precision 1.000 when they do not count, 0.962-0.966 when
they are false).  The labels of `bench/dedup_same_shot.txt` were made by looking; `db_835` and `db_868`,
listed there as a crop of one another, agree only 0.77-0.82 (another exposure or another processing of
the scene), so the strict rule counts them as two photos.  The score rule's defaults are unchanged
(`verify="none"`, or any `threshold=`).  Timings above are from a shared machine (see the load average)."""

NOTES = """\
**The target of issue 21 (recall ≥ 0.95 at precision ≥ 0.99) is missed by every descriptor, and by the
peer**, held out or not.  Each is blind to one kind of edit (second table): the colour histograms to the
±20 % brightness change (recall 0.002-0.24), the texture descriptors to the resize and the JPEG
re-encoding (lbp 0.000, correlogram 0.016-0.054), `cnn-crow` to the 50 % resize (0.460) while it catches
the brightness change (0.996); imagehash's pHash catches resize, JPEG and brightness (1.000) and misses
the 90 % crop (0.048) and the 3-5° rotation (0.124).

The defaults are therefore precision first: held out they find 0.14-0.82 of the true pairs at precision
0.974-1.000 (`cnn-crow` 0.816, `spatial-hsv` 0.791, `rgb512` 0.775, `classic` 0.642; pHash at its own
held-out threshold 0.634 / 0.989).  The best-F1 thresholds of the last table find more (`cnn-crow`
0.923, `classic` 0.882) at precision 0.91-0.93 held out, 0.86 on the 6000-file whole set: pass
`threshold=` for those.  The defaults before this calibration (one per metric) found nothing with
`classic` (l1 ≤ 0.05: recall 0.000) and little with `cnn-crow` (cosine ≥ 0.99: 0.172).  Corel-1k itself
holds a few photos of the same shot (e.g. `elephants/db_345.jpg` and `db_356.jpg`,
`mountains_and_snow/db_720.jpg` and `db_752.jpg`): they count as false pairs here (the "two originals"
column), so precision is slightly understated.  Edits here are single changes; two edits of one image
(`edit~edit`) are found less often (0.01-0.61)."""

if __name__ == "__main__":
    sys.exit(main())
