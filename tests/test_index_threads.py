"""One read-only handle serves many threads, while a writer in another process adds rows.

Four threads share one ``Index.open`` handle and search (by vector, by entry,
with a path filter, in batches) while another process appends batches of rows.
Every result must be the NumPy brute-force answer over the rows of *some*
committed state (the first ``n`` rows, ``n`` one of the writer's batch
boundaries); once the writer is done, the four threads' results equal the
single-threaded results of the same handle and the brute force over every row.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import numpy as np

from fastimg.index import Index

D = 16
N0 = 1500
BATCH = 40
BATCHES = 15
SEED = 7


def _data() -> np.ndarray:
    rng = np.random.default_rng(SEED)
    return rng.standard_normal((N0 + BATCH * BATCHES, D)).astype(np.float32)


def _brute_l2(q, X, allowed, k):
    allowed = np.asarray(sorted(allowed), np.int64)
    d = np.sqrt(((X[allowed].astype(np.float64) - q.astype(np.float64)) ** 2).sum(axis=1))
    return allowed[np.lexsort((allowed, d))[:k]].tolist()


WRITER = textwrap.dedent(f"""
    import sys, time
    import numpy as np
    from fastimg.index import Index
    rng = np.random.default_rng({SEED})
    X = rng.standard_normal(({N0 + BATCH * BATCHES}, {D})).astype(np.float32)
    with Index.open(sys.argv[1], mode="a") as ix:
        print("ready", flush=True)
        sys.stdin.readline()  # go
        for b in range({BATCHES}):
            lo = {N0} + b * {BATCH}
            ix.add_vectors(X[lo:lo + {BATCH}], [("new/" if b % 2 else "old/") + str(i) for i in range(lo, lo + {BATCH})])
            time.sleep(0.01)
    print("done", flush=True)
""")


def test_one_handle_many_threads_while_a_writer_adds_rows(tmp_path):
    X = _data()
    with Index.create(tmp_path / "ix", descriptor="custom", dim=D, metric="l2") as ix:
        ix.add_vectors(X[:N0], [f"old/{i}" for i in range(N0)])
    # queries near the rows to come, so results change while they arrive
    queries = X[N0 + np.arange(0, BATCH * BATCHES, 73)] + 0.01
    states = [N0 + BATCH * b for b in range(BATCHES + 1)]
    names = [f"old/{i}" for i in range(N0)] + [("new/" if ((i - N0) // BATCH) % 2 else "old/") + str(i)
                                               for i in range(N0, len(X))]
    under_new = {i for i, nm in enumerate(names) if nm.startswith("new/")}
    expect = {n: [_brute_l2(q, X, range(n), 5) for q in queries] for n in states}
    expect_similar = {n: _brute_l2(X[11], X, set(range(n)) - {11}, 5) for n in states}
    expect_where = {n: [_brute_l2(q, X, under_new & set(range(n)), 5) for q in queries] for n in states}

    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "ix")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    errors: list = []
    seen: list = []
    try:
        assert writer.stdout.readline().strip() == "ready"
        with Index.open(tmp_path / "ix") as ro:
            stop = threading.Event()

            def work(t: int) -> None:
                try:
                    r = 0
                    while not stop.is_set() and r < 20_000:  # until the writer is done (a cap, for safety)
                        j = (r + t) % len(queries)
                        kind = r % 4
                        if kind == 0:
                            got = [h.id for h in ro.search(queries[j], k=5)]
                            ok = any(got == expect[n][j] for n in states)
                        elif kind == 1:
                            got = [h.id for h in ro.similar(11, k=5)]
                            ok = any(got == expect_similar[n] for n in states)
                        elif kind == 2:
                            got = [h.id for h in ro.search(queries[j], k=5, where="new")]
                            ok = any(got == expect_where[n][j] for n in states)
                        else:
                            res = ro.search_batch(queries, k=5)
                            ok = any(all(res.row(i)[0].tolist() == expect[n][i] for i in range(len(queries)))
                                     for n in states)
                            got = res.ids.tolist()
                        if not ok:
                            errors.append((t, kind, j, got))
                        seen.append(len(ro))
                        r += 1
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append((t, repr(exc)))

            threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
            for th in threads:
                th.start()
            writer.stdin.write("go\n")
            writer.stdin.flush()
            assert writer.stdout.readline().strip() == "done"
            assert writer.wait(timeout=120) == 0
            stop.set()
            for th in threads:
                th.join(timeout=300)
            assert not errors, errors[:5]
            assert len(set(seen)) > 1  # the threads did run while rows arrived

            # the writer is done: four threads on the handle == one thread == brute force
            single = [[h.id for h in ro.search(q, k=5)] for q in queries]
            assert single == expect[states[-1]]
            out: dict = {}

            def final(t: int) -> None:
                out[t] = [[h.id for h in ro.search(q, k=5)] for q in queries]

            threads = [threading.Thread(target=final, args=(t,)) for t in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(timeout=300)
            assert all(out[t] == single for t in range(4))
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
