"""``Index.search`` / ``search_batch`` against the engines underneath (issue 23).

One run measures every path a user calls next to the engine that does the
work, interleaved (each round runs every case once, in turn), best of
``--rounds``, all at the same ``--threads``:

* **ANN, one query per call**: ``Index.search(vec, mode="ann")`` vs
  ``hnswlib.Index.knn_query`` on the same graph (the index's saved ``ann/`` file
  loaded by hnswlib itself, ``ef`` set, the query already unit-normalised: the
  engine's work only);
* **ANN batch**: ``Index.search_batch(Q, mode="ann")`` vs
  ``knn_query(Q, num_threads=T)``;
* **exact, one query per call** on a small index (``--small`` rows, where the
  per-call cost shows) and on the whole one: ``Index.search(mode="exact")`` vs
  ``ExactSearcher.search`` over the same matrix;
* **exact batch**: ``Index.search_batch(mode="exact")`` vs
  ``ExactSearcher.search(batch)``;
* **by image** (an ``hsv72`` index of the same size, Bhattacharyya graph):
  ``Index.search(bgr_array, mode="ann")`` minus the descriptor's time (measured
  separately and reported) vs ``knn_query``; ``Index.search(indexed_path)``
  (the stored vector is the query) vs ``knn_query``;
* **ANN vs exact through Index.search**, per call, same threads, with the
  ANN's recall@10 against the exact answers.

Data: synthetic clustered vectors (Gaussian clusters), a ``descriptor="custom"``
cosine index filled with ``add_vectors``, HNSW ``M`` 16, ``ef_construction``
200, ``ef`` 50; queries are fresh points of the same clusters (not indexed).
Built indexes are kept in ``--dir`` and reused (same data for a before/after
pair of runs: build with one version, measure with both).

Run (the machine is shared: take the lock, read ratios)::

    flock /tmp/fastimg-bench.lock .venv/bin/python bench/index_speed.py --write after
    flock /tmp/fastimg-bench.lock .venv/bin/python bench/index_speed.py --big --write after-1m

``--write LABEL`` replaces the section marked ``index_speed:LABEL`` in
bench/index.md (appended when absent).  bench/test_index_speed.py runs it at a
tiny size (``make test``) so it cannot rot.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
MD = HERE / "index.md"
DEFAULT_DIR = Path(os.environ.get("FASTIMG_BENCH_TMP", "/tmp")) / "fastimg-index-speed"


# --------------------------------------------------------------------------- data
def clustered(n: int, dim: int, seed: int, clusters: int = 256, spread: float = 0.35) -> np.ndarray:
    """``n`` points of ``clusters`` Gaussian clusters (float32), in chunks."""
    rng = np.random.default_rng(1234)  # the same centres for data and queries
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for a in range(0, n, 65536):
        b = min(n, a + 65536)
        c = rng.integers(0, clusters, b - a)
        out[a:b] = centres[c] + spread * rng.standard_normal((b - a, dim)).astype(np.float32)
    return out


def histograms(n: int, dim: int, seed: int) -> np.ndarray:
    """Clustered non-negative rows summing to 1 (histogram-like, for hsv72)."""
    x = np.abs(clustered(n, dim, seed, spread=0.5))
    x /= x.sum(axis=1, keepdims=True)
    return x


def _images(folder: Path, count: int, seed: int = 7) -> list[Path]:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        img = np.zeros((96, 128, 3), np.uint8)
        img[:] = rng.integers(0, 256, 3)
        for _ in range(6):
            x, y = rng.integers(0, 128), rng.integers(0, 96)
            cv2.circle(img, (int(x), int(y)), int(rng.integers(5, 40)), rng.integers(0, 256, 3).tolist(), -1)
        p = folder / f"img{i:03d}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths


def build(root: Path, n: int, dim: int, small: int, threads: int, log: Callable[[str], None]) -> dict:
    """The indexes of a run (built once per ``(n, dim)`` under ``root``, then reused)."""
    from fastimg import Index

    root.mkdir(parents=True, exist_ok=True)
    paths = {"custom": root / f"custom-n{n}-d{dim}.fastimg", "small": root / f"custom-n{small}-d{dim}.fastimg",
             "hsv": root / f"hsv72-n{n}.fastimg", "images": root / "images"}
    step = 100_000
    if not (paths["custom"] / ".built").exists():
        t0 = time.perf_counter()
        import shutil

        shutil.rmtree(paths["custom"], ignore_errors=True)
        with Index.create(paths["custom"], descriptor="custom", dim=dim, metric="cosine") as ix:
            for a in range(0, n, step):
                b = min(n, a + step)
                ix.add_vectors(clustered(b - a, dim, seed=a + 1), [f"v{i}" for i in range(a, b)])
            ix.build_ann(M=16, ef_construction=200, ef=50, threads=threads)
        (paths["custom"] / ".built").touch()
        log(f"built {paths['custom'].name} in {time.perf_counter() - t0:.0f} s")
    if not (paths["small"] / ".built").exists():
        import shutil

        shutil.rmtree(paths["small"], ignore_errors=True)
        with Index.create(paths["small"], descriptor="custom", dim=dim, metric="cosine") as ix:
            ix.add_vectors(clustered(small, dim, seed=1), [f"v{i}" for i in range(small)])
        (paths["small"] / ".built").touch()
    if not (paths["hsv"] / ".built").exists():
        import shutil

        t0 = time.perf_counter()
        shutil.rmtree(paths["hsv"], ignore_errors=True)
        # the same files for every size: rewriting them would change their mtimes, and an
        # index built before would then describe them again on each search by path
        images = sorted(paths["images"].glob("*.png")) or _images(paths["images"], 16)
        with Index.create(paths["hsv"], descriptor="hsv72", root=paths["images"]) as ix:
            ix.add(images, progress=False)
            for a in range(0, n, step):
                b = min(n, a + step)
                ix.add_vectors(histograms(b - a, 72, seed=a + 1), [f"h{i}" for i in range(a, b)])
            ix.build_ann(M=16, ef_construction=200, ef=50, threads=threads)
        (paths["hsv"] / ".built").touch()
        log(f"built {paths['hsv'].name} in {time.perf_counter() - t0:.0f} s")
    return paths


def raw_graph(index_path: Path, space: str, dim: int, ef: int, threads: int) -> Any:
    """hnswlib's own ``Index`` over the graph file the index saved (the same graph)."""
    import hnswlib

    g = hnswlib.Index(space=space, dim=dim)
    # ann/hnsw.bin, or ann/<build>/hnsw.<id>.bin (one directory per build): the newest
    g.load_index(str(max((index_path / "ann").rglob("hnsw*.bin"), key=lambda p: p.stat().st_mtime)))
    g.set_ef(ef)
    g.set_num_threads(threads)
    return g


# --------------------------------------------------------------------------- timing
class Race:
    """Cases timed in turns: each round runs every case once.

    A case is a list of blocks (a few queries each, or one batch); each block keeps
    its best time over the rounds and a case's time is the sum of its blocks' bests
    per unit: a block the scheduler interrupted (the machine is shared) does not
    count as long as one round ran it undisturbed."""

    def __init__(self) -> None:
        self.cases: dict[str, tuple[list[Callable[[], Any]], int]] = {}
        self.blocks: dict[str, list[float]] = {}

    def add(self, name: str, fn: Optional[Callable[[], Any]], per: int, blocks: Optional[list[Callable[[], Any]]] = None) -> None:
        """``fn`` (or the ``blocks``, together) runs ``per`` units (queries); times are per unit."""
        self.cases[name] = (blocks or [fn], per)  # type: ignore[list-item]
        self.blocks[name] = [float("inf")] * len(self.cases[name][0])

    def run(self, rounds: int) -> None:
        for fns, _ in self.cases.values():  # warm up (maps, graph loads, caches)
            for fn in fns:
                fn()
        for _ in range(rounds):
            for name, (fns, _) in self.cases.items():
                best = self.blocks[name]
                for i, fn in enumerate(fns):
                    t0 = time.perf_counter()
                    fn()
                    best[i] = min(best[i], time.perf_counter() - t0)

    @property
    def best(self) -> dict[str, float]:
        return {name: sum(self.blocks[name]) / per for name, (_, per) in self.cases.items()}


def _loop(fn: Callable[[np.ndarray], Any], queries: Any, block: int = 10) -> list[Callable[[], None]]:
    """One query per call, in blocks of ``block`` queries."""
    def run(part: Any) -> Callable[[], None]:
        def go() -> None:
            for q in part:
                fn(q)
        return go
    return [run(queries[a:a + block]) for a in range(0, len(queries), block)]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


# --------------------------------------------------------------------------- the run
def measure(n: int, dim: int, threads: int, rounds: int, *, queries: int = 200, batch: int = 600,
            exact_queries: int = 10, exact_batch: int = 32, small: int = 2000, k: int = 10, ef: int = 50,
            root: Path = DEFAULT_DIR, log: Callable[[str], None] = print) -> dict:
    """Every table row of one size: ``{"rows": [(path, fastimg s, engine s, note)], ...}``."""
    from fastimg import Index
    from fastimg.features.registry import describe
    from fastimg.metrics import prepare_queries
    from fastimg.search import ExactSearcher

    paths = build(root, n, dim, small, threads, log)
    qs = clustered(max(queries, batch), dim, seed=10**9)
    q1, qb = qs[:queries], qs[:batch]
    qe = qs[:exact_queries]
    qeb = qs[:exact_batch]
    qs_unit = prepare_queries("cosine", qs)

    ix = Index.open(paths["custom"], threads=threads)
    ixs = Index.open(paths["small"], threads=threads)
    ixh = Index.open(paths["hsv"], threads=threads)
    g = raw_graph(paths["custom"], "ip", dim, ef, threads)
    gh = raw_graph(paths["hsv"], "ip", 72, ef, threads)
    exact = ExactSearcher(np.asarray(ix.vectors), "cosine", threads=threads)
    exact_small = ExactSearcher(np.asarray(ixs.vectors), "cosine", threads=threads)

    # by image: BGR arrays (not indexed) and indexed files
    import cv2

    images = sorted(paths["images"].glob("*.png"))
    bgr = [cv2.imread(str(p)) for p in images]
    bgr = [np.ascontiguousarray(255 - im) for im in bgr]  # not the indexed images: described
    desc = ixh.descriptor
    vec_img = np.stack([describe(im, desc) for im in bgr])
    unit_img = prepare_queries("bhattacharyya", vec_img)
    stored = ixh.vectors_of([str(p) for p in images])
    unit_stored = prepare_queries("bhattacharyya", stored)
    img_paths = [str(p) for p in images]

    # answers first: the Index gives the engine's answers (exact), and recall (ANN)
    truth, _ = exact.search(q1, k)
    ids_ann = np.array([[h.id for h in ix.search(q, k, mode="ann", ef=ef)] for q in q1])
    ids_exact = np.array([[h.id for h in ix.search(q, k, mode="exact")] for q in qe])
    assert (ids_exact == truth[:exact_queries]).all(), "Index.search(mode='exact') differs from ExactSearcher"
    raw_ids, _ = g.knn_query(qs_unit[:queries], k=k)
    rec = recall(ids_ann, truth)
    rec_raw = recall(raw_ids.astype(np.int64), truth)

    r = Race()
    r.add("ann1.index", None, queries, _loop(lambda q: ix.search(q, k, mode="ann", ef=ef), q1))
    r.add("ann1.engine", None, queries, _loop(lambda q: g.knn_query(q, k=k), qs_unit[:queries]))
    r.add("annB.index", lambda: ix.search_batch(qb, k, mode="ann", ef=ef), batch)
    r.add("annB.engine", lambda: g.knn_query(qs_unit[:batch], k=k, num_threads=threads), batch)
    r.add("ex1s.index", None, queries, _loop(lambda q: ixs.search(q, k, mode="exact"), q1))
    r.add("ex1s.engine", None, queries, _loop(lambda q: exact_small.search(q, k), q1))
    r.add("exBs.index", lambda: ixs.search_batch(qb, k, mode="exact"), batch)
    r.add("exBs.engine", lambda: exact_small.search(qb, k), batch)
    r.add("ex1.index", None, exact_queries, _loop(lambda q: ix.search(q, k, mode="exact"), qe, block=1))
    r.add("ex1.engine", None, exact_queries, _loop(lambda q: exact.search(q, k), qe, block=1))
    r.add("exB.index", lambda: ix.search_batch(qeb, k, mode="exact"), exact_batch)
    r.add("exB.engine", lambda: exact.search(qeb, k), exact_batch)
    r.add("img.index", None, len(bgr), _loop(lambda im: ixh.search(im, k, mode="ann", ef=ef), bgr))
    r.add("img.describe", None, len(bgr), _loop(lambda im: describe(im, desc), bgr))
    r.add("img.engine", None, len(bgr), _loop(lambda q: gh.knn_query(q, k=k), unit_img))
    r.add("path.index", None, len(img_paths), _loop(lambda p: ixh.search(p, k, mode="ann", ef=ef), img_paths))
    r.add("path.engine", None, len(img_paths), _loop(lambda q: gh.knn_query(q, k=k + 1), unit_stored))
    load0 = os.getloadavg()
    r.run(rounds)
    load1 = os.getloadavg()
    b = r.best
    img_index = b["img.index"] - b["img.describe"]
    rows = [
        ("one ANN query per call", '`Index.search(v, mode="ann")`', b["ann1.index"],
         "`hnswlib` `knn_query(v)`", b["ann1.engine"]),
        (f"{batch} ANN queries (per query)", '`Index.search_batch(Q, mode="ann")`', b["annB.index"],
         f"`knn_query(Q, num_threads={threads})`", b["annB.engine"]),
        (f"one exact query, {small:,} rows", '`Index.search(v, mode="exact")`', b["ex1s.index"],
         "`ExactSearcher.search(v)`", b["ex1s.engine"]),
        (f"{batch} exact queries, {small:,} rows (per query)", '`Index.search_batch(Q, mode="exact")`',
         b["exBs.index"], "`ExactSearcher.search(Q)`", b["exBs.engine"]),
        (f"one exact query, {n:,} rows", '`Index.search(v, mode="exact")`', b["ex1.index"],
         "`ExactSearcher.search(v)`", b["ex1.engine"]),
        (f"{exact_batch} exact queries, {n:,} rows (per query)", '`Index.search_batch(Q, mode="exact")`',
         b["exB.index"], "`ExactSearcher.search(Q)`", b["exB.engine"]),
        ("by image (BGR array, hsv72, ANN), describe excluded", '`Index.search(img, mode="ann")` - describe',
         img_index, "`knn_query(describe(img))`", b["img.engine"]),
        ("by indexed path (hsv72, ANN: stored vector)", '`Index.search(path, mode="ann")`', b["path.index"],
         "`knn_query(stored vector)`", b["path.engine"]),
    ]
    out = {"n": n, "dim": dim, "threads": threads, "rounds": rounds, "rows": rows, "load": (load0, load1),
           "describe": b["img.describe"], "recall_ann": rec, "recall_raw": rec_raw,
           "ann_vs_exact": b["ex1.index"] / b["ann1.index"], "ann1": b["ann1.index"], "ex1": b["ex1.index"],
           "fastimg": sys.modules["fastimg"].__file__}
    for h in (ix, ixs, ixh):
        h.close()
    return out


def _us(s: float) -> str:
    return f"{s * 1e6:,.0f} us" if s < 0.1 else f"{s * 1e3:,.1f} ms"


def table(res: dict, label: str) -> str:
    lines = [
        f"N = {res['n']:,} x {res['dim']} (clustered, custom cosine index, M 16, ef_construction 200, ef 50), "
        f"threads {res['threads']}, best of {res['rounds']} interleaved rounds per block of 10 one-query calls (1 for the exact scan of all rows; batches: per batch); load average "
        f"{res['load'][0][0]:.1f} -> {res['load'][1][0]:.1f} on {os.cpu_count()} cores "
        f"(shared machine: read the ratios); `{label}`.",
        "",
        "| call | fastimg | | engine | | ratio | added per call |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for what, fname, ft, ename, et in res["rows"]:
        lines.append(f"| {what} | {fname} | {_us(ft)} | {ename} | {_us(et)} | {ft / et:.2f}x | "
                     f"{(ft - et) * 1e6:+,.0f} us |")
    lines += [
        "",
        f"Descriptor (hsv72 of a 128 x 96 BGR array), excluded above: {_us(res['describe'])} per image.",
        f"ANN vs exact through `Index.search`, per call: {res['ann_vs_exact']:.1f}x "
        f"({_us(res['ann1'])} vs {_us(res['ex1'])}); recall@10 against the exact answers "
        f"{res['recall_ann']:.3f} (raw hnswlib at the same ef: {res['recall_raw']:.3f}).",
    ]
    return "\n".join(lines)


def write(label: str, text: str, path: Path = MD) -> None:
    """Replace the ``index_speed:label`` section of ``path`` (append it when absent)."""
    begin, end = f"<!-- index_speed:{label} begin -->", f"<!-- index_speed:{label} end -->"
    block = f"{begin}\n{text}\n{end}"
    doc = path.read_text() if path.exists() else ""
    pat = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if pat.search(doc):
        doc = pat.sub(lambda _: block, doc)
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(doc)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="rows (default 200,000)")
    ap.add_argument("--big", action="store_true", help="also 1,000,000 rows")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--queries", type=int, default=200, help="one-per-call queries per round")
    ap.add_argument("--batch", type=int, default=600, help="queries of a batch")
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the indexes are built and kept")
    ap.add_argument("--write", metavar="LABEL", help="write the tables into bench/index.md's LABEL section")
    a = ap.parse_args(argv)
    sizes = [a.n] + ([1_000_000] if a.big and a.n != 1_000_000 else [])
    texts = []
    for n in sizes:
        res = measure(n, a.dim, a.threads, a.rounds, queries=a.queries, batch=a.batch, root=a.dir,
                      log=lambda s: print(s, file=sys.stderr))
        label = a.write or "stdout"
        texts.append(table(res, f"{label}, {res['fastimg']}"))
        print(texts[-1] + "\n", flush=True)
    if a.write:
        write(a.write, "\n\n".join(texts))


if __name__ == "__main__":
    main()
