"""Any name the OS can hold (issue 15): paths are bytes on POSIX.

Files whose names are not UTF-8, hold newlines or other control characters, have
255-byte components or lie deep in the tree are indexed, found again by the next
incremental run (unchanged, moved), returned by searches, shown escaped on one
line by the CLI and its errors, and read back from the JSON.  Files that vanish,
turn into a directory or a FIFO, or change between the walk and the read are
reported and never hang or stop the run.

Oracles: the names as bytes (``os.listdir(bytes)``), ``sqlite3`` reads of the
stored BLOBs, ``describe`` of each file for the stored rows.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastimg.errors import ImageError, NotInIndexError, escape_text
from fastimg.index import Index

BIN = Path(sys.executable).with_name("fastimg")

NAMES = [
    b"latin1_\xe9t\xe9.png",         # Latin-1 bytes: not UTF-8
    b"new\nline.png",                # a newline in the name
    b"tab\tand\x1bescape.png",       # other control characters
    "caf\u00e9_utf8.png".encode(),   # valid UTF-8, not ASCII
    b"back\\slash.png",
    b"L" * 251 + b".png",            # a 255-byte component
]


def _png(i: int) -> bytes:
    import cv2

    rng = np.random.default_rng(i)
    img = np.zeros((24, 24, 3), np.uint8)
    img[:12] = rng.integers(0, 256, 3)
    img[12:] = rng.integers(0, 256, 3)
    return cv2.imencode(".png", img)[1].tobytes()


def _write(path: bytes, i: int) -> bytes:
    with open(path, "wb") as f:
        f.write(_png(i))
    return path


@pytest.fixture
def tree(tmp_path):
    """A folder of PNGs with hostile names (bytes paths)."""
    root = os.fsencode(tmp_path / "photos")
    os.mkdir(root)
    sub = os.path.join(root, b"dir_\xff\n")
    os.mkdir(sub)
    files = [_write(os.path.join(root, n), i) for i, n in enumerate(NAMES)]
    files.append(_write(os.path.join(sub, b"inner.png"), 50))
    return root, files


def _stored(index: Path) -> list[bytes]:
    con = sqlite3.connect(index / "meta.sqlite")
    try:
        return [r[0] for r in con.execute("SELECT path FROM images WHERE deleted = 0 ORDER BY id")]
    finally:
        con.close()


def test_hostile_names_are_indexed_found_again_and_searched(tmp_path, tree):
    from fastimg.features.registry import describe

    root, files = tree
    idx = tmp_path / "ix"
    with Index.create(idx, root=os.fsdecode(root)) as ix:
        rep = ix.add(os.fsdecode(root))
        assert (rep.added, rep.skipped) == (len(files), {})
        # stored as the names' bytes, relative to the root (an independent sqlite3 read)
        assert sorted(_stored(idx)) == sorted(os.path.relpath(f, root) for f in files)
        live = ix.live_ids()
        paths = ix.paths(live)
        assert sorted(os.fsencode(p) for p in paths) == sorted(files)  # os.fsdecode convention
        for i, p in zip(live, paths):
            np.testing.assert_allclose(ix.vectors[i], describe(p, "hsv72"), rtol=1e-6)
        # the next incremental run finds every one unchanged
        again = ix.add(os.fsdecode(root))
        assert (again.added, again.unchanged, again.updated, again.moved) == (0, len(files), 0, 0)
        # a hostile name renamed to another hostile name: a move (same row)
        before = {os.fsencode(p): i for i, p in zip(live, paths)}
        dest = os.path.join(root, b"moved_\xe9\n.png")
        os.rename(files[0], dest)
        moved = ix.add(os.fsdecode(root))
        assert (moved.moved, moved.added, moved.removed) == (1, 0, 0)
        assert ix.paths([before[files[0]]]) == [os.fsdecode(dest)]
        # search by such a path: its own row is "self", hits carry the names
        q = os.fsdecode(files[1])
        hits = ix.search(q, k=3, exclude_self=False)
        assert hits[0].id == before[files[1]] and os.fsencode(hits[0].path) == files[1]
        assert ix.metadata(before[files[1]])["path"] == q
        # remove by such a path
        assert ix.remove(os.fsdecode(files[2])) == 1
        with pytest.raises(NotInIndexError) as exc:
            ix.remove(os.fsdecode(files[2]))
        assert "\n" not in str(exc.value) and "\\x1b" in str(exc.value)  # one line, escaped


def test_lookups_filters_and_similar_take_any_name(tmp_path, tree):
    """``in``, ``id_of``, ``entry``, ``metadata``, ``vectors_of``, ``similar``,
    ``where=`` and ``remove`` find a hostile name given as a ``str`` with
    surrogate escapes, a ``Path`` or the OS's bytes.  Oracles: the ids of the
    stored BLOBs (sqlite3), ``describe`` of each file, a NumPy L2 brute force."""
    from fastimg.features.registry import describe

    root, files = tree
    idx = tmp_path / "ix"
    # the index outside the folder, its root the folder's parent: paths stored relative to it
    with Index.create(idx, root=tmp_path) as ix:
        ix.add(os.fsdecode(root))
    con = sqlite3.connect(idx / "meta.sqlite")
    try:
        stored = {bytes(p): i for i, p in con.execute("SELECT id, path FROM images WHERE deleted = 0")}
    finally:
        con.close()
    base = os.fsencode(tmp_path)
    want = {f: stored[os.path.relpath(f, base)] for f in files}
    with Index.open(idx) as ro:
        X = np.asarray(ro.vectors, dtype=np.float64)
        for f, i in want.items():
            for form in (f, os.fsdecode(f), Path(os.fsdecode(f))):
                assert form in ro and ro.id_of(form) == i
                e = ro.entry(form)
                assert e.id == i and os.fsencode(e.path) == f and ro.metadata(form)["id"] == i
            got = ro.vectors_of([f, os.fsdecode(f)])
            for row in got:
                np.testing.assert_allclose(row, describe(os.fsdecode(f), "hsv72"), rtol=1e-6)
        ghost = os.path.join(root, b"ghost_\xe9.png")
        assert ghost not in ro and os.fsdecode(ghost) not in ro
        with pytest.raises(NotInIndexError) as exc:
            ro.id_of(ghost)
        assert "ghost_\\xe9.png" in str(exc.value)  # named, escaped on one line
        # similar by the bytes of a name: exactly that entry left out
        live = ro.live_ids()
        for f in (files[0], files[1]):
            i = want[f]
            others = live[live != i]
            d = ((X[others] - X[i]) ** 2).sum(axis=1)
            expected = others[np.lexsort((others, d))][:3].tolist()
            for form in (f, os.fsdecode(f)):
                assert [h.id for h in ro.similar(form, k=3, metric="l2")] == expected
        # where=: the folder whose name is not UTF-8 (str, bytes), and globs over such bytes
        sub = os.path.join(root, b"dir_\xff\n")
        inner = want[os.path.join(sub, b"inner.png")]
        q = X[want[files[3]]].astype(np.float32)
        for where in (os.fsdecode(sub), sub, Path(os.fsdecode(sub))):
            assert [h.id for h in ro.search(q, k=5, where=where)] == [inner]
        assert [h.id for h in ro.search(q, k=5, where="photos/latin1_?t?.png")] == [want[files[0]]]
        assert [h.id for h in ro.search(q, k=5, where=os.fsdecode(b"*/latin1_\xe9*"))] == [want[files[0]]]
        assert sorted(h.id for h in ro.search(q, k=10, where=root, exclude_self=False)) == sorted(want.values())
    with Index.open(idx, mode="a") as ix:
        assert ix.remove(files[0]) == 1 and files[0] not in ix  # remove by bytes
        assert ix.remove(sub) == 1  # a folder by bytes: every image under it
        assert len(ix) == len(files) - 2


def test_deep_paths_and_paths_too_long_for_the_os(tmp_path):
    """Components of 255 bytes up to PATH_MAX are indexed; a folder deeper than
    the OS can open by path is reported (the run goes on)."""
    base = os.fsencode(tmp_path / "deep")
    os.mkdir(base)
    d = base
    comp = b"d" * 255
    while len(d) + 2 * 256 + 255 < 4000:  # stay below PATH_MAX (4096) with the file name
        d = os.path.join(d, comp)
        os.mkdir(d)
    deep_file = _write(os.path.join(d, b"f" * 251 + b".png"), 7)
    assert len(deep_file) > 3500
    # beyond PATH_MAX: folders made relative to a directory fd, unreachable by an absolute path
    fd = os.open(d, os.O_RDONLY)
    chain = d
    try:
        while len(chain) <= 4096:
            os.mkdir(comp, dir_fd=fd)
            nfd = os.open(comp, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd, chain = nfd, os.path.join(chain, comp)
    finally:
        os.close(fd)
    with Index.create(tmp_path / "ix") as ix:
        rep = ix.add(os.fsdecode(base))
        assert rep.added == 1
        assert [os.fsencode(p) for p in ix.paths(ix.live_ids())] == [deep_file]
        assert rep.skipped == {os.fsdecode(chain): "unreadable folder (File name too long)"}
        assert ix.add(os.fsdecode(base)).unchanged == 1


def _racy(monkeypatch, ix, act):
    """Run ``act()`` between the walk and the description (monkeypatching the
    describe step of ``Index.add``)."""
    from fastimg.index import ingest

    real = ingest._describe
    done = []

    def describe(paths, desc, workers, dim, progress=None):
        if not done:
            done.append(True)
            act()
        return real(paths, desc, workers, dim, progress)

    monkeypatch.setattr(ingest, "_describe", describe)


def test_files_that_change_between_the_walk_and_the_read(tmp_path, monkeypatch):
    from fastimg.features.registry import describe

    root = tmp_path / "photos"
    root.mkdir()
    files = {n: root / f"{n}.png" for n in ("keep", "gone", "dir", "fifo", "edited", "keep2")}
    for i, p in enumerate(files.values()):
        p.write_bytes(_png(i))

    def act():
        files["gone"].unlink()
        files["dir"].unlink()
        files["dir"].mkdir()
        files["fifo"].unlink()
        os.mkfifo(files["fifo"])  # reading it would wait for a writer forever
        st = files["edited"].stat()
        files["edited"].write_bytes(_png(99))
        os.utime(files["edited"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    with Index.create(tmp_path / "ix") as ix:
        _racy(monkeypatch, ix, act)
        rep = ix.add(root)
        assert rep.skipped == {str(files["gone"]): "not found", str(files["dir"]): "unreadable",
                               str(files["fifo"]): "unreadable", str(files["edited"]): "changed while indexing"}
        assert rep.details[str(files["dir"])] == "is a directory"
        assert "FIFO" in rep.details[str(files["fifo"])]
        assert rep.added == 2
        paths = ix.paths(ix.live_ids())
        assert sorted(paths) == [str(files["keep"]), str(files["keep2"])]
        for i, p in zip(ix.live_ids(), paths):
            np.testing.assert_allclose(ix.vectors[i], describe(p, "hsv72"), rtol=1e-6)
        monkeypatch.undo()
        # the next run indexes what is there now (the edited file; the FIFO and the folder stay out)
        rep = ix.add(root)
        assert rep.added == 1 and str(files["edited"]) in ix.paths(ix.live_ids())
        assert set(rep.skipped) == {str(files["fifo"])}  # a folder named .png is walked, not reported


def test_files_that_vanish_between_the_walk_and_the_hash(tmp_path, monkeypatch):
    """The step before describing (the content hash of a changed file) meets the
    same races: reported, never a hang on a FIFO."""
    from fastimg.index import ingest

    root = tmp_path / "photos"
    root.mkdir()
    a, b, c = (root / f"{n}.png" for n in "abc")
    for i, p in enumerate((a, b, c)):
        p.write_bytes(_png(i))
    real = ingest.Ingest.scan

    def scan(self, *args, **kw):
        out = real(self, *args, **kw)
        a.unlink()
        b.unlink()
        os.mkfifo(b)
        return out

    monkeypatch.setattr(ingest.Ingest, "scan", scan)
    with Index.create(tmp_path / "ix") as ix:
        rep = ix.add(root)
    assert rep.skipped == {str(a): "not found", str(b): "unreadable"} and rep.added == 1


def _cli(*args, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(BIN), *[os.fsencode(a) if not isinstance(a, bytes) else a for a in args]],
                         capture_output=True, timeout=300, stdin=subprocess.DEVNULL,
                         env={k: v for k, v in os.environ.items() if k != "FASTIMG_INDEX"}, **kw)
    return subprocess.CompletedProcess(res.args, res.returncode, res.stdout.decode("utf-8", "surrogateescape"),
                                       res.stderr.decode("utf-8", "surrogateescape"))


def test_cli_shows_hostile_names_escaped_on_one_line_and_json_round_trips(tmp_path, tree):
    root, files = tree
    (open(os.path.join(root, b"broken\n\xe9.png"), "wb")).write(b"not a png")
    idx = tmp_path / "ix"
    res = _cli("index", "-i", idx, root, "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["added"] == len(files)
    # JSON: the str with surrogate escapes (\udcXX); os.fsencode gives the bytes back
    (skip,) = doc["skipped_files"]
    assert os.fsencode(skip["path"]) == os.path.join(root, b"broken\n\xe9.png") and skip["reason"] == "not an image"
    assert "\\udce9" in res.stdout  # the JSON escape of the byte 0xe9
    # text: one line per skipped file, escaped
    res = _cli("index", "-i", tmp_path / "ix2", root, "--show-skipped")
    listed = [ln for ln in res.stdout.splitlines() if ln.startswith("  ")]
    assert listed == [f"  {escape_text(os.fsdecode(os.path.join(root, b'broken')))}\\n\\xe9.png: not an image "
                      "(unrecognised file signature; fastimg reads JPEG, PNG, GIF, BMP, WebP, TIFF, PNM, JPEG 2000, "
                      "HEIF/AVIF or ICO files)"]
    # query: every hit on its own line, names escaped; the query named by bytes on the command line
    res = _cli("query", "-i", idx, "-k", str(len(files)), "--include-self", files[1])
    assert res.returncode == 0 and res.stderr == "", res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == len(files)
    shown = {ln.split("  ")[-1] for ln in lines}
    assert shown == {escape_text(os.fsdecode(f)) for f in files}
    assert escape_text(os.fsdecode(files[1])).endswith("new\\nline.png")
    res = _cli("query", "-i", idx, "-k", "1", "--json", files[0])
    hit = json.loads(res.stdout)
    assert os.fsencode(hit["query"]) == files[0]
    # an error naming a hostile path stays one line
    bad = os.path.join(root, b"broken\n\xe9.png")
    res = _cli("query", "-i", idx, bad)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "broken\\n\\xe9.png" in res.stderr, res.stderr


def test_image_error_of_a_hostile_path_is_one_line():
    err = ImageError(os.fsdecode(b"/x/a\nb\xe9\x1b.jpg"), "truncated", "ends at byte 3")
    assert str(err) == "/x/a\\nb\\xe9\\x1b.jpg: truncated (ends at byte 3)"
    assert err.source == os.fsdecode(b"/x/a\nb\xe9\x1b.jpg")  # the attribute keeps the real name
    assert escape_text("plain é ok") == "plain é ok"
