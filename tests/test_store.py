"""The on-disk format (fastimg.index.store): files, crash-safe appends, locking,
corruption and version errors.  Oracles: the raw files re-read with numpy /
json / sqlite3, independently of the store's own readers."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from fastimg.index import store as store_mod
from fastimg.errors import (
    IndexCorruptError,
    IndexFormatError,
    IndexLockedError,
    IndexNotFoundError,
    IndexReadOnlyError,
)
from fastimg.index.store import DATABASE, MANIFEST, NewRow, Store

DIM = 8


def _make(tmp_path: Path, n: int = 5, name: str = "ix") -> tuple[Path, np.ndarray]:
    path = tmp_path / name
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    s = Store.create(path, descriptor={"name": "custom", "dim": DIM}, dim=DIM, metric="cosine")
    try:
        if n:
            s.append_vectors(vecs)
            s.commit_rows([NewRow(f"v{i}", False) for i in range(n)])
    finally:
        s.close()
    return path, vecs


def _sql(path: Path, query: str, args: tuple = ()) -> list:
    con = sqlite3.connect(path / DATABASE)
    try:
        return con.execute(query, args).fetchall()
    finally:
        con.close()


def _sql_exec(path: Path, query: str, args: tuple = ()) -> None:
    con = sqlite3.connect(path / DATABASE)
    try:
        con.execute(query, args)
        con.commit()
    finally:
        con.close()


# --------------------------------------------------------------------------- layout
def test_files_are_what_the_docstring_says(tmp_path):
    path, vecs = _make(tmp_path)
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["format"] == "fastimg-index"
    assert manifest["format_version"] == store_mod.FORMAT_VERSION
    assert manifest["dim"] == DIM and manifest["dtype"] == "<f4"
    assert manifest["descriptor"] == {"name": "custom", "dim": DIM}
    assert manifest["metric"] == "cosine"
    assert "root" not in manifest  # format 2: in the database
    # raw little-endian float32, no header
    raw = np.fromfile(path / "vectors.0.f32", dtype="<f4").reshape(-1, DIM)
    np.testing.assert_array_equal(raw, vecs)
    meta = dict(_sql(path, "SELECT key, value FROM meta"))
    assert meta["committed"] == "5" and meta["generation"] == "0" and meta["dim"] == str(DIM)
    # the root: by default the index's parent, recorded as an absolute path
    assert json.loads(meta["root"]) == str(tmp_path) and json.loads(meta["descriptor"]) == manifest["descriptor"]
    rows = _sql(path, "SELECT id, path, is_file, deleted, stale FROM images ORDER BY id")
    assert rows == [(i, f"v{i}".encode(), 0, 0, 0) for i in range(5)]  # paths are bytes (BLOB)
    assert {r[1]: r[2] for r in _sql(path, "PRAGMA table_info(images)")}["path"] == "BLOB"


def test_map_vectors_is_a_read_only_memmap_of_committed_rows(tmp_path):
    path, vecs = _make(tmp_path)
    s = Store(path)
    try:
        v = s.map_vectors(s.state())
        assert isinstance(v, np.memmap) and not v.flags.writeable
        np.testing.assert_array_equal(np.asarray(v), vecs)
    finally:
        s.close()


def test_create_refuses_an_existing_index_or_a_foreign_directory(tmp_path):
    path, _ = _make(tmp_path)
    with pytest.raises(FileExistsError, match="already exists"):
        Store.create(path, descriptor={"name": "custom"}, dim=DIM, metric="cosine")
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not empty"):
        Store.create(other, descriptor={"name": "custom"}, dim=DIM, metric="cosine")
    assert (other / "cat.jpg").read_bytes() == b"x"  # never touched


def test_create_after_an_interrupted_create(tmp_path):
    path, _ = _make(tmp_path)
    (path / MANIFEST).unlink()  # as if the process died before writing the manifest
    with pytest.raises(IndexNotFoundError, match="manifest.json"):
        Store(path)
    s = Store.create(path, descriptor={"name": "custom"}, dim=DIM, metric="cosine")
    try:
        assert s.state().committed == 0
    finally:
        s.close()


# --------------------------------------------------------------------------- appends
def test_uncommitted_rows_are_invisible_then_truncated_by_the_next_writer(tmp_path):
    path, vecs = _make(tmp_path)
    s = Store(path, writable=True)
    s.append_vectors(np.ones((3, DIM), np.float32))  # appended + fsynced, never committed
    s.close()
    vfile = path / "vectors.0.f32"
    assert vfile.stat().st_size == 8 * DIM * 4
    r = Store(path)
    try:
        assert r.state().committed == 5
        np.testing.assert_array_equal(np.asarray(r.map_vectors(r.state())), vecs)
    finally:
        r.close()
    assert vfile.stat().st_size == 8 * DIM * 4  # readers never modify
    w = Store(path, writable=True)
    w.close()
    assert vfile.stat().st_size == 5 * DIM * 4
    # a partial row (killed mid-write) is also discarded
    with open(vfile, "ab") as f:
        f.write(b"\x01\x02\x03")
    Store(path, writable=True).close()
    assert vfile.stat().st_size == 5 * DIM * 4


def test_commit_rows_requires_matching_pending_vectors(tmp_path):
    path, _ = _make(tmp_path)
    s = Store(path, writable=True)
    try:
        s.append_vectors(np.zeros((2, DIM), np.float32))
        with pytest.raises(ValueError, match="2 vectors are pending"):
            s.commit_rows([NewRow("a", False)])
        ids = s.commit_rows([NewRow("a", False), NewRow("b", False)], delete=[0])
        assert list(ids) == [5, 6]
        assert _sql(path, "SELECT id FROM images WHERE deleted = 1") == [(0,)]
        with pytest.raises(ValueError, match=r"shape \(n, 8\)"):
            s.append_vectors(np.zeros((2, DIM + 1), np.float32))
    finally:
        s.close()


def test_read_only_store_refuses_writes(tmp_path):
    path, _ = _make(tmp_path)
    s = Store(path)
    try:
        with pytest.raises(IndexReadOnlyError, match="read-only"):
            s.append_vectors(np.zeros((1, DIM), np.float32))
        with pytest.raises(IndexReadOnlyError):
            s.mark_deleted([0])
    finally:
        s.close()


def test_live_path_is_unique(tmp_path):
    path, _ = _make(tmp_path)
    s = Store(path, writable=True)
    try:
        s.append_vectors(np.zeros((1, DIM), np.float32))
        with pytest.raises(sqlite3.IntegrityError):
            s.commit_rows([NewRow("v1", False)])
        s.rollback_pending()
        assert s.state().committed == 5
    finally:
        s.close()


# --------------------------------------------------------------------------- locking
def test_second_writer_gets_a_clear_error_naming_the_pid(tmp_path):
    path, _ = _make(tmp_path)
    w = Store(path, writable=True)
    try:
        with pytest.raises(IndexLockedError, match=rf"pid {os.getpid()}\b"):
            Store(path, writable=True)
        r = Store(path)  # readers are not blocked
        assert r.state().committed == 5
        r.close()
    finally:
        w.close()
    Store(path, writable=True).close()  # released on close


def test_lock_held_by_another_process(tmp_path):
    path, _ = _make(tmp_path)
    code = (
        "import sys, time; from fastimg.index.store import Store; "
        f"s = Store({str(path)!r}, writable=True); print('ready', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(IndexLockedError, match=rf"pid {proc.pid}\b"):
            Store(path, writable=True)
    finally:
        proc.kill()
        proc.wait()
    Store(path, writable=True).close()  # the kernel released the dead holder's lock


# --------------------------------------------------------------------------- corruption
def test_missing_directory_or_manifest(tmp_path):
    with pytest.raises(IndexNotFoundError, match="nope"):
        Store(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(IndexNotFoundError, match="not a directory"):
        Store(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexNotFoundError, match="manifest.json not found"):
        Store(tmp_path / "empty")


def test_truncated_vector_file(tmp_path):
    path, _ = _make(tmp_path)
    vfile = path / "vectors.0.f32"
    os.truncate(vfile, 3 * DIM * 4 + 5)
    for writable in (False, True):
        with pytest.raises(IndexCorruptError, match=r"vectors\.0\.f32.*truncated.*holds 3 rows.*5 rows"):
            Store(path, writable=writable)
    assert vfile.stat().st_size == 3 * DIM * 4 + 5  # the evidence is left alone


def test_missing_vector_file(tmp_path):
    path, _ = _make(tmp_path)
    (path / "vectors.0.f32").unlink()
    with pytest.raises(IndexCorruptError, match=r"vectors\.0\.f32: vector file is missing"):
        Store(path)


def test_missing_database_is_not_recreated(tmp_path):
    path, _ = _make(tmp_path)
    for suffix in ("", "-wal", "-shm"):
        p = path / (DATABASE + suffix)
        if p.exists():
            p.unlink()
    for writable in (False, True):
        with pytest.raises(IndexCorruptError, match=r"meta\.sqlite: metadata database is missing"):
            Store(path, writable=writable)
    assert not (path / DATABASE).exists()


def test_garbage_database(tmp_path):
    path, _ = _make(tmp_path)
    for suffix in ("-wal", "-shm"):
        p = path / (DATABASE + suffix)
        if p.exists():
            p.unlink()
    (path / DATABASE).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(IndexCorruptError, match=r"meta\.sqlite: unreadable metadata database"):
        Store(path)


def test_manifest_dim_does_not_match_the_data(tmp_path):
    path, _ = _make(tmp_path)
    m = json.loads((path / MANIFEST).read_text())
    m["dim"] = DIM * 2
    (path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(IndexCorruptError, match=r"manifest\.json: manifest says dim=16 but .*meta\.sqlite says dim=8"):
        Store(path)


def test_metadata_does_not_match_the_committed_count(tmp_path):
    path, _ = _make(tmp_path)
    _sql_exec(path, "DELETE FROM images WHERE id = 4")
    with pytest.raises(IndexCorruptError, match=r"meta\.sqlite: metadata has rows up to id 3 but the committed count is 5"):
        Store(path)


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "unreadable manifest"),
        ('{"format": "something-else"}', "not a fastimg index manifest"),
        ('{"format": "fastimg-index", "format_version": 1, "dim": "8"}', "'dim' missing or not a int"),
    ],
)
def test_invalid_manifest(tmp_path, text, match):
    path, _ = _make(tmp_path)
    (path / MANIFEST).write_text(text)
    with pytest.raises(IndexFormatError, match=rf"manifest\.json: .*{match}"):
        Store(path)


def test_wrong_dtype_in_manifest(tmp_path):
    path, _ = _make(tmp_path)
    m = json.loads((path / MANIFEST).read_text())
    m["dtype"] = "<f8"
    (path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="unsupported dtype"):
        Store(path)


# --------------------------------------------------------------------------- versions
def _set_version(path: Path, version: int) -> None:
    m = json.loads((path / MANIFEST).read_text())
    m["format_version"] = version
    (path / MANIFEST).write_text(json.dumps(m))


def test_newer_format_is_refused(tmp_path):
    path, _ = _make(tmp_path)
    _set_version(path, store_mod.FORMAT_VERSION + 1)
    for writable in (False, True):
        with pytest.raises(IndexFormatError, match=r"newer fastimg.*upgrade fastimg"):
            Store(path, writable=writable)


def test_older_format_is_migrated_by_a_writer_only(tmp_path, monkeypatch):
    path, vecs = _make(tmp_path)
    calls = []

    def v1_to_v2(directory, conn, manifest):
        calls.append(directory)
        conn.execute("ALTER TABLE images ADD COLUMN labels TEXT")
        return dict(manifest, migrated=True)

    cur = store_mod.FORMAT_VERSION
    monkeypatch.setattr(store_mod, "FORMAT_VERSION", cur + 1)
    monkeypatch.setattr(store_mod, "READ_VERSIONS", frozenset({cur + 1}))  # readers cannot read it as it is
    with pytest.raises(IndexFormatError, match=rf"older than this fastimg's \({cur + 1}\); open it with mode='a'"):
        Store(path)
    with pytest.raises(IndexFormatError, match=f"no migration from format version {cur} to {cur + 1}"):
        Store(path, writable=True)
    assert json.loads((path / MANIFEST).read_text())["format_version"] == cur  # untouched after the failure
    monkeypatch.setitem(store_mod.MIGRATIONS, cur, v1_to_v2)
    s = Store(path, writable=True)
    s.close()
    assert calls == [path]
    m = json.loads((path / MANIFEST).read_text())
    assert m["format_version"] == cur + 1 and m["migrated"] is True
    assert "labels" in [r[1] for r in _sql(path, "PRAGMA table_info(images)")]
    r = Store(path)  # now readable, data intact
    try:
        np.testing.assert_array_equal(np.asarray(r.map_vectors(r.state())), vecs)
    finally:
        r.close()
    assert calls == [path]  # migrated once


# --------------------------------------------------------------------------- compaction & caches
def test_compact_rewrites_vectors_and_renumbers(tmp_path):
    path, vecs = _make(tmp_path, n=6)
    s = Store(path, writable=True)
    try:
        assert s.mark_deleted([1, 4]) == 2
        assert s.mark_deleted([1]) == 0  # already deleted
        mapping = s.compact()
        np.testing.assert_array_equal(mapping, [0, -1, 1, 2, -1, 3])
        st = s.state()
        assert (st.committed, st.generation) == (4, 1)
    finally:
        s.close()
    assert not (path / "vectors.0.f32").exists()
    raw = np.fromfile(path / "vectors.1.f32", dtype="<f4").reshape(-1, DIM)
    np.testing.assert_array_equal(raw, vecs[[0, 2, 3, 5]])
    assert _sql(path, "SELECT id, path, deleted FROM images ORDER BY id") == [
        (0, b"v0", 0), (1, b"v2", 0), (2, b"v3", 0), (3, b"v5", 0)
    ]


def test_compact_leftovers_are_cleaned_by_the_next_writer(tmp_path):
    path, _ = _make(tmp_path)
    (path / "vectors.7.f32").write_bytes(b"\0" * 64)  # an interrupted compaction's new file
    Store(path, writable=True).close()
    assert not (path / "vectors.7.f32").exists()
    assert (path / "vectors.0.f32").exists()


def test_cache_round_trip_and_invalidation(tmp_path):
    from fastimg.index.caches import Caches

    path, vecs = _make(tmp_path)
    s = Store(path, writable=True)
    c = Caches(path / "cache")
    try:
        st = s.state()
        made = c.new("cosine-prepared", st, (5, DIM))
        made[1][:] = vecs * 2
        c.publish("cosine-prepared", st, made)
        # the name carries the CRC-32 of the data (zlib over the array's bytes: the oracle)
        crc = zlib.crc32((vecs * 2).astype("<f4").tobytes())
        assert [p.name for p in c.files()] == [f"cosine-prepared.g0.n5.c{crc:08x}.npy"]
        np.testing.assert_array_equal(np.load(c.files()[0]), vecs * 2)
        assert c.verify(c.files()[0]) is None
        got = c.load("cosine-prepared", st, (5, DIM))
        np.testing.assert_array_equal(np.asarray(got), vecs * 2)
        assert c.load("cosine-prepared", st, (6, DIM)) is None  # wrong shape: ignored
        # a later state of the same generation finds it as a prefix
        s.append_vectors(np.zeros((2, DIM), np.float32))
        s.commit_rows([NewRow("x", False), NewRow("y", False)])
        st2 = s.state()
        assert c.load("cosine-prepared", st2, (7, DIM)) is None
        n, prefix = c.best_prefix("cosine-prepared", st2, (DIM,))
        assert n == 5
        np.testing.assert_array_equal(np.asarray(prefix), vecs * 2)
        # a flipped bit in the data: the name's checksum catches it (verify; load only checks the shape)
        p = c.files()[0]
        raw = bytearray(p.read_bytes())
        raw[-3] ^= 0x10
        p.write_bytes(bytes(raw))
        assert "checksum mismatch" in c.verify(p)
        # a corrupt cache file is ignored, not an error
        p.write_bytes(b"garbage")
        assert "unreadable" in c.verify(p)
        assert c.load("cosine-prepared", st, (5, DIM)) is None
        assert c.best_prefix("cosine-prepared", st2, (DIM,)) is None
    finally:
        s.close()


def test_meta_values_round_trip_and_reserved_keys(tmp_path):
    path, _ = _make(tmp_path)
    s = Store(path, writable=True)
    try:
        s.set_meta("ann", {"M": 16, "rows": 5})
        assert s.get_meta("ann") == {"M": 16, "rows": 5}
        v0 = s.state().version
        s.set_meta("ann", None)
        assert s.get_meta("ann") is None
        assert s.state().version == v0 + 1  # every write transaction bumps the version
        with pytest.raises(ValueError, match="reserved"):
            s.set_meta("committed", 3)
    finally:
        s.close()


def test_file_hash_is_blake2b_of_the_bytes(tmp_path):
    import hashlib

    f = tmp_path / "x.bin"
    data = os.urandom(3 << 20)
    f.write_bytes(data)
    assert store_mod.file_hash(f, chunk=1 << 16) == hashlib.blake2b(data, digest_size=16).hexdigest()


def test_reader_sees_new_commits(tmp_path):
    path, vecs = _make(tmp_path)
    r = Store(path)
    w = Store(path, writable=True)
    try:
        assert r.state().committed == 5
        w.append_vectors(np.full((1, DIM), 7, np.float32))
        assert r.state().committed == 5  # appended, not committed
        w.commit_rows([NewRow("new", False)])
        st = r.state()
        assert st.committed == 6
        np.testing.assert_array_equal(np.asarray(r.map_vectors(st))[5], np.full(DIM, 7, np.float32))
    finally:
        w.close()
        r.close()
