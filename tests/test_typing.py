"""The public API as a typed application meets it (issue 21, item 9).

tests/apps/photo_app.py is a small app written as a user would write it: it must pass
``mypy --strict`` (static ``__all__``, typed signatures, no ``Any`` leaking from the lazy
module attributes) and, run on a real folder with a broken file and a duplicate, answer
what a NumPy brute force over the same images answers.
"""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastimg
import fastimg.errors

APP = Path(__file__).parent / "apps" / "photo_app.py"


def test_all_is_a_static_literal_naming_every_public_name():
    tree = ast.parse(Path(fastimg.__file__).read_text())
    literal = [node for node in tree.body if isinstance(node, ast.Assign)
               and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)]
    assert len(literal) == 1
    names = ast.literal_eval(literal[0].value)  # raises if it is not a plain literal
    assert names == fastimg.__all__
    assert len(set(names)) == len(names)
    errors = {n for n in fastimg.errors.__all__ if isinstance(getattr(fastimg.errors, n), type)}
    assert set(names) == {"__version__"} | errors | set(fastimg._LAZY)
    for name in names:
        assert getattr(fastimg, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Indx'"):
        fastimg.Indx  # noqa: B018


def test_every_error_is_a_fastimg_error_and_a_builtin():
    for name in fastimg.errors.__all__:
        cls = getattr(fastimg.errors, name)
        if not isinstance(cls, type):
            continue  # escape_text
        assert issubclass(cls, fastimg.FastimgError)
        if cls is not fastimg.FastimgError and name != "IndexError_":
            assert any(issubclass(cls, b) for b in (ValueError, TypeError, KeyError, OSError, RuntimeError)), name


def test_user_app_is_clean_under_mypy_strict(tmp_path):
    pytest.importorskip("mypy", reason="mypy is in the test extra; `make install` installs it")
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
                        "--no-error-summary", str(APP)], capture_output=True, text=True, cwd=APP.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    # and the check has teeth: a misspelt name or a wrong type is caught
    bad = tmp_path / "bad_app.py"
    bad.write_text("import fastimg\nx: int = fastimg.Index.open('i').search('q')\nfastimg.Indx\n")
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), str(bad)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1
    assert 'Incompatible types in assignment (expression has type "list[Hit]"' in r.stdout
    assert 'Module has no attribute "Indx"' in r.stdout


def _pearson_matrix(rows: np.ndarray) -> np.ndarray:
    return np.corrcoef(rows.astype(np.float64))


def _pearson(q: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.array([np.corrcoef(q.astype(np.float64), r.astype(np.float64))[0, 1] for r in rows])


def test_user_app_answers_like_numpy_brute_force(corel_dir, tmp_path):
    photos = tmp_path / "photos"
    classes = sorted(p for p in corel_dir.iterdir() if p.is_dir())[:2]
    for c in classes:
        shutil.copytree(c, photos / c.name)
    (photos / classes[0].name / "broken.jpg").write_bytes(b"not a jpeg at all")
    original = sorted((photos / classes[0].name).glob("*.jpg"))[1]
    shutil.copy(original, photos / classes[1].name / "zz_copy.jpg")
    query = sorted((photos / classes[1].name).glob("*.jpg"))[3]

    r = subprocess.run([sys.executable, str(APP), str(tmp_path / "ix"), str(photos), str(query)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)

    files = sorted(p for p in photos.rglob("*.jpg") if p.name != "broken.jpg")
    assert out["skipped"] == [str(photos / classes[0].name / "broken.jpg")]
    assert out["describe_failed"] == [str(photos / classes[0].name / "broken.jpg")]
    assert out["added"] == out["live"] == len(files)

    # oracle: NumPy Pearson over the images' hsv72 vectors, ties by path order as ids follow the walk
    vecs = np.stack([fastimg.describe(p, "hsv72") for p in files])
    qv = fastimg.describe(query, "hsv72")
    s = _pearson(qv, vecs)
    s[files.index(query)] = -np.inf  # the query file itself is indexed: left out
    best = np.argsort(-s, kind="stable")[:5]
    assert [h["path"] for h in out["by_file"]] == [str(files[i]) for i in best]
    np.testing.assert_allclose([h["score"] for h in out["by_file"]], s[best], rtol=1e-5)
    assert all(h["score"] >= 0.5 for h in out["threshold"])
    assert len(out["threshold"]) == min(50, int((s >= 0.5).sum()))
    # where= keeps one folder: every hit under it, as many as the folder holds (minus the query)
    folder = tmp_path / out["where_folder"]  # relative to the index root (the index folder's parent)
    assert all(Path(h["path"]).parent == folder for h in out["where"])
    in_folder = [i for i, p in enumerate(files) if p.parent == folder and p != query]
    assert len(out["where"]) == min(50, len(in_folder))
    # similar(first entry): its identical copy ranks first, the entry itself is left out
    first = out["first_entry"]
    assert first["in"] is True
    assert out["by_entry"][0]["path"] in {str(original), str(photos / classes[1].name / "zz_copy.jpg")}
    assert out["by_entry"][0]["score"] == pytest.approx(1.0)
    assert first["path"] not in [h["path"] for h in out["by_entry"]]
    # duplicates at pearson >= 0.99: the files of the groups are those in a brute-force pair
    # (generated fixture photos of one class can be near-duplicates too), the copy with its original
    pair = _pearson_matrix(vecs) >= 0.99
    np.fill_diagonal(pair, False)
    assert sorted(p for g in out["duplicate_groups"] for p in g) == sorted(str(files[i])
                                                                          for i in np.flatnonzero(pair.any(1)))
    copy = str(photos / classes[1].name / "zz_copy.jpg")
    assert any(str(original) in g and copy in g for g in out["duplicate_groups"])
    # describe_many -> topk (failed row dropped): the brute force over every file, query included
    s_all = _pearson(qv, vecs)
    best_all = np.argsort(-s_all, kind="stable")[:5]
    assert [Path(t["path"]).resolve() for t in out["topk"]] == [files[i] for i in best_all]
    # the documented errors were raised and caught by their documented types
    assert [e.split(":")[0] for e in out["errors"]] == ["search", "similar", "image"]
