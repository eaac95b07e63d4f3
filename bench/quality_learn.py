"""Metric learning (issue 20): held-out retrieval quality of learned projections.

The one command (a few minutes on 2 cores once the features are cached; writes
the section between the ``quality_learn.py`` markers of bench/quality.md)::

    flock /tmp/fastimg-bench.lock .venv/bin/python bench/quality_learn.py

* Features: ``classic`` and ``cnn-crow`` of every Corel-1k and UKBench-56 image,
  extracted ONCE with :func:`fastimg.describe_many` and cached under ``--cache``
  (default ``/tmp/fastimg-learn-cache``, never in the repository).
* Splits (:func:`fastimg.learn.split_labels`, seeds 0..S-1):
  (a) Corel-1k by image, 50/50 per class: fit on the train half, the held-out
  half queries itself (each test image ranks the other 499 test images; 49
  relevant);  (b) Corel-1k by class, 5 classes train / 5 held out: the held-out
  classes' 500 images query themselves (99 relevant);  (c) UKBench-56 by group,
  7 groups train / 7 held out: the 28 held-out images query themselves
  *including the query* (N-S, max 4).
* Every hyper-parameter (PCA-whitening dim and power, LDA shrinkage and dim, NCA
  init and dim) is chosen on the TRAIN part only: the train part is split again
  the same way (by image, or by class: 3 classes fit / 2 validate, averaged over
  2 inner splits; UKBench 4 groups / 3 groups), the value with the best
  validation mAP is kept and refitted on the whole train part.  The reported
  part is never used for a choice.
* Rankings: NumPy brute force in float64 (ties by lower id) scored with
  :mod:`fastimg.eval`.  Raw ``classic`` is ranked with ``l1`` (its default
  metric) and, for reference, the cosine; every projection's output is signed and
  L2-normalised, ranked with the cosine (L2 ranks alike on unit vectors).

``FASTIMG_BENCH_SCALE=tiny``: 1 seed, small grids, stdout only (the smoke run).
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

BEGIN = "<!-- quality_learn.py: begin (generated; the rest of the file is quality.py's) -->"
END = "<!-- quality_learn.py: end -->"
DESCRIPTORS = [("classic", "l1"), ("cnn-crow", "cosine")]
SEEDS = pick(1, 3, 3)
PCA_GRID = pick([{"dim": 32}, {"dim": None}],
                [{"dim": d, "power": p} for d in (16, 32, 64, 128, None) for p in (0.0, 0.25, 0.5)],
                [{"dim": d, "power": p} for d in (16, 32, 64, 128, None) for p in (0.0, 0.25, 0.5)])
SHRINKAGES = pick([0.5], [0.1, 0.3, 0.5, 0.7, 0.9], [0.1, 0.3, 0.5, 0.7, 0.9])
_NCA = [{"init": "lda", "dim": d, "max_iter": it} for d in (16, "all") for it in (10, 100)] + \
    [{"init": "pca", "dim": 64, "max_iter": 100}]
NCA_GRID = pick([{"init": "lda", "dim": 16}], _NCA, _NCA)


def log(s: str) -> None:
    print(s, flush=True)  # a script, not library code


# --------------------------------------------------------------------------- data
def features(name: str, layout: str, descriptor: str, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, labels) of a data set, described once and cached as .npz."""
    from fastimg import describe_many
    from fastimg.eval import load_dataset

    root = SHARED_DATA / name
    if not root.is_dir():
        sys.exit(f"quality_learn.py: dataset not found: {root} (expected beside the repository in ../shared/data)")
    ds = load_dataset(root, layout)
    f = cache / f"{name}_{descriptor}.npz"
    if f.exists():
        with np.load(f) as z:
            if z["x"].shape[0] == len(ds) and np.array_equal(z["labels"], ds.labels):
                return z["x"].astype(np.float64), z["labels"]
    t0 = time.perf_counter()
    x, errors = describe_many([str(p) for p in ds.paths], descriptor)
    if errors:
        log(f"  {len(errors)} images failed ({next(iter(errors.values()))}); their rows are NaN")
    log(f"  described {name} with {descriptor}: {x.shape} in {time.perf_counter() - t0:.1f} s")
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, x=x, labels=ds.labels)
    return x.astype(np.float64), ds.labels


# --------------------------------------------------------------------------- scoring
def score(z: np.ndarray, labels: np.ndarray, metric: str, ukbench: bool) -> dict:
    """mAP (and N-S for UKBench) of the rows of ``z`` querying each other."""
    from fastimg.eval import evaluate_scores
    from fastimg.projection import l2_normalize

    if metric == "cosine":
        u = l2_normalize(z).astype(np.float64)
        s, hib = u @ u.T, True
    elif metric == "l1":
        s, hib = np.abs(z[:, None, :] - z[None, :, :]).sum(-1), False
    else:
        raise ValueError(metric)
    ms = ["map", "ns"] if ukbench else ["map", "p@10"]
    r = evaluate_scores(s, labels, higher_is_better=hib, exclude_self=not ukbench, metrics=ms)
    return {m: r[m] for m in ms}


# --------------------------------------------------------------------------- models
def fit(kind: str, params: dict, x: np.ndarray, y: np.ndarray):
    """A fitted model with .transform, for kind in pca / lda / nca."""
    from fastimg.learn import learn_projection
    from fastimg.projection import PCAWhitening

    if kind == "pca":
        return PCAWhitening(**params).fit(x)
    params = {**params, "dim": resolve_dim(params.get("dim"), x, y)}
    return learn_projection(x, y, method=kind, **params)


def resolve_dim(dim, x: np.ndarray, y: np.ndarray):
    """Grid dims are symbolic where they depend on the data: "all" = D, "classes-1" = n_classes - 1."""
    if dim == "all":
        return x.shape[1]
    if dim == "classes-1":
        return np.unique(y).size - 1
    return dim


def inner_splits(y: np.ndarray, by: str, seed: int) -> list:
    """(fit, validation) id pairs inside a train part."""
    from fastimg.learn import split_labels

    if by == "image":
        return [split_labels(y, 0.5, by="image", seed=1000 + seed)]
    n_cls = np.unique(y).size
    frac = 3 / 5 if n_cls == 5 else 4 / 7 if n_cls == 7 else 0.5
    return [split_labels(y, frac, by="class", seed=1000 + 7 * seed + k) for k in range(pick(1, 2, 2))]


def tune(kind: str, grid: list, x: np.ndarray, y: np.ndarray, by: str, seed: int, ukbench: bool) -> tuple:
    """The grid point with the best mean validation mAP inside (x, y), and that mAP."""
    from fastimg.errors import DescriptorError
    from fastimg.projection import LinearProjection

    best = None
    splits = inner_splits(y, by, seed)
    full_lda: dict = {}  # LDA's dim only truncates the matrix: one fit per (split, shrinkage)
    for params in grid:
        vals = []
        for k, (f, v) in enumerate(splits):
            try:
                if kind == "lda":
                    key = (k, params["shrinkage"])
                    if key not in full_lda:
                        full_lda[key] = fit(kind, {**params, "dim": "all"}, x[f], y[f])
                    m = full_lda[key]
                    model = LinearProjection(m.mean_, m.matrix_[:resolve_dim(params["dim"], x[f], y[f])])
                else:
                    model = fit(kind, params, x[f], y[f])
            except DescriptorError as exc:  # e.g. NCA's PCA start with more dims than fit vectors
                log(f"      skipped {kind} {params}: {exc}")
                vals.append(-1.0)
                continue
            vals.append(score(model.transform(x[v]), y[v], "cosine", ukbench)["map"])
        m = float(np.mean(vals))
        if best is None or m > best[1] + 1e-12:
            best = (params, m)
    return best


def lda_grid() -> list:
    return [{"shrinkage": s, "dim": d} for s in SHRINKAGES for d in ("classes-1", "all")]


def run_protocol(x: np.ndarray, y: np.ndarray, metric: str, by: str, frac: float, ukbench: bool) -> dict:
    """{row name: [per-seed dict(score..., params, fit_s)]} for one descriptor and split kind."""
    from fastimg.learn import split_labels

    rows: dict = {}
    for seed in range(SEEDS):
        tr, te = split_labels(y, frac, by=by, seed=seed)
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
        add = lambda name, res: rows.setdefault(name, []).append(res)  # noqa: E731
        add(f"raw, {metric}", score(xte, yte, metric, ukbench))
        if metric != "cosine":
            add("raw, cosine", score(xte, yte, "cosine", ukbench))
        lda_best = None
        for kind, label in (("pca", "PCA-whitening (unsupervised)"), ("lda", "LDA (supervised whitening)"),
                            ("nca", "NCA")):
            if kind == "pca":
                grid = PCA_GRID
            elif kind == "lda":
                grid = lda_grid()
            else:  # NCA starts from the LDA shrinkage chosen on validation
                grid = [{**g, "shrinkage": lda_best["shrinkage"]} for g in NCA_GRID]
            params, val = tune(kind, grid, xtr, ytr, by, seed, ukbench)
            if kind == "lda":
                lda_best = params
            t0 = time.perf_counter()
            model = fit(kind, params, xtr, ytr)
            secs = time.perf_counter() - t0
            res = score(model.transform(xte), yte, "cosine", ukbench)
            res.update(params=params, val=val, fit_s=secs, out_dim=int(model.output_dim))
            if kind == "nca":
                res["iterations"] = model.params["iterations"]
            add(label, res)
        # the library's defaults, NOT tuned (an ablation, for the choice of the defaults)
        from fastimg.learn import learn_projection
        from fastimg.projection import LinearProjection

        full = learn_projection(xtr, ytr, method="lda", dim=xtr.shape[1])
        n_cls = np.unique(ytr).size
        for name, model in (("LDA, library defaults (shrinkage 0.5, dim classes-1; untuned)",
                             LinearProjection(full.mean_, full.matrix_[:n_cls - 1])),
                            ("LDA, shrinkage 0.5, dim all (untuned)", full),
                            ("NCA, library defaults (init lda, dim 64, 100 iterations; untuned)",
                             learn_projection(xtr, ytr, method="nca"))):
            res = score(model.transform(xte), yte, "cosine", ukbench)
            res.update(out_dim=int(model.output_dim))
            add(name, res)
        log(f"    seed {seed}: " + ", ".join(f"{k} {v[-1]['map']:.4f}" for k, v in rows.items()))
    return rows


def timings(xs: dict) -> tuple[list, tuple, tuple]:
    """Best-of-3 fit seconds with the library defaults on the Corel-1k train half (split seed 0)."""
    from fastimg.learn import learn_projection, split_labels
    from fastimg.projection import PCAWhitening

    load0 = os.getloadavg()
    rows = []
    for desc, (x, y) in xs.items():
        tr, _ = split_labels(y, 0.5, seed=0)
        xtr, ytr = x[tr], y[tr]
        for name, call in (
                ("PCA-whitening (defaults)", lambda: PCAWhitening().fit(xtr)),
                ("LDA (defaults)", lambda: learn_projection(xtr, ytr)),
                ("LDA, dim all", lambda: learn_projection(xtr, ytr, dim=xtr.shape[1])),
                ("NCA (defaults: init lda, dim 64)", lambda: learn_projection(xtr, ytr, method="nca")),
                ("NCA, init pca, dim 64", lambda: learn_projection(xtr, ytr, method="nca", init="pca"))):
            best, extra = float("inf"), ""
            for _ in range(3):
                t0 = time.perf_counter()
                model = call()
                best = min(best, time.perf_counter() - t0)
            if getattr(model, "method", "") == "nca":
                extra = f"{model.params['iterations']} iterations, objective {model.params['objective_init']:.3f} -> " \
                        f"{model.params['objective']:.3f}"
            rows.append(f"| `{desc}` | {xtr.shape[0]} × {xtr.shape[1]} | {name} | {best:.2f} | {extra} |")
    return rows, load0, os.getloadavg()


# --------------------------------------------------------------------------- report
def fmt_params(p: dict) -> str:
    return ",".join(f"{k}={'all' if v is None else v}" for k, v in p.items())


def table(rows: dict, measure: str, base: str) -> list:
    lines = [f"| method | {measure} (mean ± sd over {SEEDS} splits) | Δ vs PCA-whitening | per split | "
             "chosen on validation (per split) | output dim | fit s (mean) |",
             "|---|---:|---:|---|---|---:|---:|"]
    ref = np.array([r[measure] for r in rows[base]])
    for name, res in rows.items():
        v = np.array([r[measure] for r in res])
        delta = "" if name == base or name.startswith("raw") else f"{np.mean(v - ref):+.4f} (min {np.min(v - ref):+.4f})"
        chosen = "; ".join(fmt_params(r["params"]) for r in res) if "params" in res[0] else ""
        dims = ",".join(sorted({str(r["out_dim"]) for r in res})) if "out_dim" in res[0] else ""
        fit_s = f"{np.mean([r['fit_s'] for r in res]):.2f}" if "fit_s" in res[0] else ""
        lines.append(f"| {name} | {v.mean():.4f} ± {v.std():.4f} | {delta} | "
                     f"{' '.join(f'{t:.3f}' for t in v)} | {chosen} | {dims} | {fit_s} |")
    return lines


def write_section(out: Path, section: str) -> None:
    text = out.read_text() if out.exists() else ""
    block = f"{BEGIN}\n{section.rstrip()}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    out.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default="/tmp/fastimg-learn-cache", help="feature cache directory")
    ap.add_argument("--out", default=None, help="markdown file (default bench/quality.md; tiny: stdout only)")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else (None if scale() == "tiny" else REPO / "bench" / "quality.md")
    cache = Path(args.cache)
    t_all = time.perf_counter()
    load0 = os.getloadavg()
    summary, sections = [], []
    corel = {}
    for desc, metric in DESCRIPTORS:
        xc, yc = features("corel1k", "folders", desc, cache)
        corel[desc] = (xc, yc)
        xu, yu = features("ukbench56", "ukbench", desc, cache)
        if scale() == "tiny":  # 20 images per class
            keep = np.concatenate([np.flatnonzero(yc == c)[:20] for c in np.unique(yc)])
            xc, yc = xc[keep], yc[keep]
        for tag, title, xx, yy, by, frac, ukb in (
                ("a", "Corel-1k, split by image (50/50 per class): the held-out half queries itself", xc, yc,
                 "image", 0.5, False),
                ("b", "Corel-1k, split by class (5 train / 5 held out): the held-out classes query themselves",
                 xc, yc, "class", 0.5, False),
                ("c", "UKBench-56, split by group (7 train / 7 held out): the held-out 28 images query "
                      "themselves, query included", xu, yu, "class", 0.5, True)):
            log(f"{desc}: ({tag}) {title}")
            rows = run_protocol(xx, yy, metric, by, frac, ukb)
            base = "PCA-whitening (unsupervised)"
            measure = "ns" if ukb else "map"
            lines = table(rows, measure, base)
            if ukb:
                lines += ["", "mAP: " + ", ".join(f"{k} {np.mean([r['map'] for r in v]):.4f}"
                                                  for k, v in rows.items())]
            sections.append((desc, tag, title, lines))
            pca = np.array([r[measure] for r in rows[base]])
            learned = {k: np.array([r[measure] for r in rows[k]]) for k in ("LDA (supervised whitening)", "NCA")}
            summary.append((desc, tag, measure, pca, learned, rows))
    load1 = os.getloadavg()
    log("timings")
    timing, tload0, tload1 = timings(corel)

    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    md = ["## Metric learning: learned projections on held-out images and classes (issue 20)", "",
          "Produced by `flock /tmp/fastimg-bench.lock .venv/bin/python bench/quality_learn.py` "
          f"(scale `{scale()}`, {time.perf_counter() - t_all:.0f} s, fastimg {commit}, Python "
          f"{platform.python_version()}, {platform.machine()}; shared 2-core machine, load average "
          f"{load0[0]:.2f} at the start, {load1[0]:.2f} at the end).  Protocol and tuning: the docstring of "
          "`bench/quality_learn.py`.  In short: every figure is measured on images the projection never saw "
          "(split by image) or on classes it never saw (split by class / group); every hyper-parameter "
          "(PCA-whitening dim and power, LDA shrinkage and dim, NCA init and dim) was chosen on a validation "
          "split *inside* the train part, then refitted on the whole train part.  Raw `classic` is ranked "
          "with `l1` (its default) and the cosine; projections (signed outputs, L2-normalised) with the "
          "cosine.  `dim=all` = every direction (D).", "",
          "### Targets", ""]
    for desc, tag, measure, pca, learned, rows in summary:
        for k, v in learned.items():
            d = v - pca
            if tag == "a":
                ok = np.mean(d) >= 0.05
                goal = "≥ PCA-whitening + 0.05"
            elif tag == "b":
                ok = np.mean(d) >= 0.0
                goal = "no worse than PCA-whitening"
            else:
                ok, goal = None, "reported"
            verdict = "" if ok is None else (" - **met**" if ok else " - **NOT met**")
            md.append(f"* `{desc}` ({tag}) {k}: {measure} {v.mean():.4f} vs PCA-whitening {pca.mean():.4f} "
                      f"(Δ {np.mean(d):+.4f}, per split min {np.min(d):+.4f}); target {goal}{verdict}")
    md += ["", "### Fit time", "",
           "Best of 3 fits with the library's defaults on the Corel-1k train half (split seed 0), "
           f"measured after the quality runs; load average {tload0[0]:.2f} before, {tload1[0]:.2f} after, "
           "on the shared 2-core machine (OpenBLAS on both cores), so the seconds are indicative.  The `fit s` "
           "columns below are single fits with the chosen parameters during the (busier) quality runs.", "",
           "| descriptor | train vectors | method | seconds | NCA |", "|---|---|---|---:|---|"] + timing
    for desc, tag, title, lines in sections:
        md += ["", f"### `{desc}` ({tag}) {title}", ""] + lines
    text = "\n".join(md) + "\n"
    if out is None:
        print(text)
    else:
        write_section(out, text)
        log(f"wrote the section of {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
