"""``fastimg query --id N``, ``--threshold T`` and ``--under DIR`` (the console script,
in a subprocess), against a brute force with cv2.compareHist over the stored
vectors and the folders the test made."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _photos import photo_tree
from fastimg.index import Index

BIN = Path(sys.executable).with_name("fastimg")


def run(*args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FASTIMG_INDEX"}
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, env=env, timeout=300,
                          stdin=subprocess.DEVNULL)


def bhattacharyya_top(X, q, allowed, k, threshold=None):
    import cv2

    allowed = np.asarray(sorted(allowed), np.int64)
    d = np.array([cv2.compareHist(q, X[i], cv2.HISTCMP_BHATTACHARYYA) for i in allowed])
    order = np.lexsort((allowed, d))
    ids, d = allowed[order], d[order]
    if threshold is not None:
        ids = ids[d <= threshold]
    return ids[:k].tolist()


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("q") / "photos"
    files = photo_tree(root, per_class=4)
    idx = root.parent / "photos.fastimg"
    with Index.create(idx, root=root.parent) as ix:
        ix.add(root)
        X = np.array(ix.vectors)
        ids = {str(f): ix.id_of(f) for f in files}
    return idx, root, X, ids


def test_query_by_id_leaves_out_exactly_that_image(indexed):
    idx, root, X, ids = indexed
    target = ids[str(root / "horses" / sorted(os.listdir(root / "horses"))[0])]
    res = run("query", "--id", target, "-k", "5", "--index", idx, "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["id"] == target and doc["query"] in ids and ids[doc["query"]] == target
    assert [r["id"] for r in doc["results"]] == bhattacharyya_top(X, X[target], set(ids.values()) - {target}, 5)
    # --include-self keeps it (first: its distance to itself is 0)
    doc = json.loads(run("query", "--id", target, "-k", "3", "--index", idx, "--json", "--include-self").stdout)
    assert doc["results"][0]["id"] == target
    # an image argument and ids: a list, images first
    some = next(iter(ids))
    docs = json.loads(run("query", some, "--id", target, "--id", 0, "-k", "2", "--index", idx, "--json").stdout)
    assert [d.get("id") for d in docs] == [None, target, 0]


def test_query_threshold_and_under(indexed):
    idx, root, X, ids = indexed
    q = next(p for p in ids if "/beaches/" in p)
    qi = ids[q]
    everyone = set(ids.values()) - {qi}
    import cv2

    d = sorted(cv2.compareHist(X[qi], X[i], cv2.HISTCMP_BHATTACHARYYA) for i in everyone)
    t = (d[2] + d[3]) / 2  # between the 3rd and 4th nearest: 3 results
    doc = json.loads(run("query", q, "-k", "10", "--threshold", t, "--index", idx, "--json").stdout)
    exp = bhattacharyya_top(X, X[qi], everyone, 10, threshold=t)
    assert [r["id"] for r in doc["results"]] == exp and len(exp) == 3 and all(r["score"] <= t for r in doc["results"])
    under = {i for p, i in ids.items() if p.startswith(str(root / "flowers") + os.sep)}
    doc = json.loads(run("query", q, "-k", "3", "--under", root / "flowers", "--index", idx, "--json").stdout)
    assert [r["id"] for r in doc["results"]] == bhattacharyya_top(X, X[qi], under, 3)
    two = under | {i for p, i in ids.items() if "/horses/" in p}
    res = run("query", q, "-k", "20", "--under", root / "flowers", "--under", root / "horses", "--index", idx)
    assert res.returncode == 0 and len(res.stdout.splitlines()) == len(two)
    # relative to the current directory, as every path argument
    res = subprocess.run([str(BIN), "query", q, "-k", "3", "--under", "flowers", "--index", idx, "--json"],
                         capture_output=True, text=True, cwd=root, timeout=300)
    assert [r["id"] for r in json.loads(res.stdout)["results"]] == bhattacharyya_top(X, X[qi], under, 3)
    assert "warning" not in res.stderr
    # a folder that does not exist (here: named from the index's root, not the current directory)
    res = subprocess.run([str(BIN), "query", q, "-k", "3", "--under", "flowers", "--index", idx],
                         capture_output=True, text=True, cwd=root.parent, timeout=300)
    assert res.returncode == 0 and res.stdout == "(no results)\n"
    assert f"--under flowers: {root.parent / 'flowers'} is not a directory" in res.stderr


@pytest.mark.parametrize("args,code,msg", [
    (("query",), 2, "give a query IMAGE"),
    (("query", "--id", "-3"), 2, "expected an id"),
    (("query", "--id", "x"), 2, "expected an id"),
    (("query", "--id", "0", "--threshold", "nan"), 2, "finite"),
    (("query", "--id", "0", "--under", "x", "--ann"), 2, "--under searches exactly"),
    (("query", "--id", "9999"), 1, "--id 9999: no such image"),
])
def test_query_entry_errors(indexed, args, code, msg):
    idx = indexed[0]
    res = run(*args, "--index", idx)
    assert res.returncode == code, res.stderr
    assert msg in res.stderr and "Traceback" not in res.stderr and res.stdout == ""
