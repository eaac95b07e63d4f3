"""The int8 backbone on this CPU: onnxruntime's saturating 8-bit kernels against exact sums.

On x86-64 without VNNI, onnxruntime's uint8 x int8 kernels add pairs of products with
``vpmaddubsw`` into a saturating 16-bit integer; fastimg's sessions set
``session.x64quantprecision`` there (:func:`fastimg.features.deep_common.exact_int8_needed`),
which widens to 16 bits first and makes the sums exact.  This script measures what that
costs and what it buys, side by side in one run, on the graph of the default deep
descriptor (``efficientnet-lite0``, int8, 320 px):

* ``float32``: the float32 graph;
* ``int8, exact`` (``int8, VNNI`` on a CPU with VNNI): the int8 graph as fastimg runs it
  (:func:`fastimg.features.deep_common.ort_session_options`: exact sums where the CPU
  lacks VNNI, onnxruntime's VNNI kernels, exact too, where it has it);
* ``int8, default kernels``: the int8 graph with onnxruntime's default options (what
  fastimg ran before; on a CPU with VNNI the same as the row above).

Network only (the images are decoded, resized to 320 x 224 / 224 x 320 and normalised
beforehand): one single-threaded session per variant, one image per pass, interleaved
rounds over the first ``--timed`` images, best round each.  Quality: SPoC (the feature map's
spatial mean, L2) of every Corel-1k image through each variant, its cosine to float32's,
and Corel-1k mAP (each image queries the other 999, cosine; :func:`fastimg.eval.evaluate_scores`).

    .venv/bin/python bench/int8_cpu.py [--timed 200] [--rounds 3] [--limit N]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deep_runtime import corel  # noqa: E402  (Corel-1k paths and class labels)

NAME = "efficientnet-lite0"
SIDE = 320


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timed", type=int, default=200, help="images timed per round (default 200)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds (default 3)")
    ap.add_argument("--limit", type=int, default=None, help="about N Corel images for the quality part")
    args = ap.parse_args(argv)

    import cv2
    import onnxruntime as ort

    from fastimg import _core
    from fastimg.eval import evaluate_scores
    from fastimg.features.backbone_cache import backbone_model
    from fastimg.features.deep_common import exact_int8_needed, ort_session_options
    from fastimg.features.nets.backbones import BACKBONES

    spec = BACKBONES[NAME]
    paths, labels = corel(args.limit)
    inputs = []
    for p in paths:
        bgr = cv2.imread(str(p))
        h, w = bgr.shape[:2]
        size = (SIDE, round(SIDE * h / w / 32) * 32) if w >= h else (round(SIDE * w / h / 32) * 32, SIDE)
        rgb = cv2.cvtColor(cv2.resize(bgr, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        inputs.append(spec.preprocess(rgb))

    def session(precision: str, fastimg: bool) -> object:
        if fastimg:  # fastimg's own options: exact sums where the CPU has no VNNI
            o = ort_session_options(ort, 1)
        else:  # onnxruntime's defaults, one thread
            o = ort.SessionOptions()
            o.intra_op_num_threads = 1
            o.inter_op_num_threads = 1
            o.log_severity_level = 3
        return ort.InferenceSession(backbone_model(NAME, precision), o, providers=["CPUExecutionProvider"])

    exact = exact_int8_needed()
    variants = {"float32": session("float32", True),
                "int8, exact" if exact else "int8, VNNI": session("int8", True),
                "int8, default kernels": session("int8", False)}
    out = variants["float32"].get_outputs()[0].name
    timed = inputs[: args.timed]
    best = {k: float("inf") for k in variants}
    loads = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for k, s in variants.items():
            t0 = time.perf_counter()
            for x in timed:
                s.run([out], {"image": x})
            best[k] = min(best[k], (time.perf_counter() - t0) / len(timed))
        loads.append(os.getloadavg()[0])
    vecs = {}
    for k, s in variants.items():
        v = np.stack([s.run([out], {"image": x})[0][0].mean(axis=(1, 2)) for x in inputs])
        vecs[k] = v / np.linalg.norm(v, axis=1, keepdims=True)
    info = _core.lowp_target_info()
    cpu = ", ".join(n for n, (_, has) in info.items() if has and n != "scalar")
    print(f"{NAME}, int8 graph of fastimg's cache, {SIDE} px, network only, 1 thread, 1 image per pass; "
          f"best of {args.rounds} interleaved rounds of {len(timed)} images; quality on {len(inputs)} Corel-1k "
          f"images; CPU {platform.processor() or platform.machine()} with {cpu} (exact sums needed: "
          f"{exact}); onnxruntime {ort.__version__}; load average "
          f"{min(loads):.1f}-{max(loads):.1f}\n")
    print("| graph | ms per image | vs float32 | cosine to float32: min / 1st pct / median | Corel-1k mAP |")
    print("|---|---:|---:|---:|---:|")
    for k in variants:
        cos = np.sum(vecs[k] * vecs["float32"], axis=1)
        m = evaluate_scores(vecs[k] @ vecs[k].T, labels)["map"]
        print(f"| {k} | {best[k] * 1e3:.2f} | {best['float32'] / best[k]:.2f}x | "
              f"{cos.min():.4f} / {np.percentile(cos, 1):.4f} / {np.median(cos):.4f} | {m:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
