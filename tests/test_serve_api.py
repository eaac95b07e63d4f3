"""``fastimg serve``'s HTTP API through FastAPI's TestClient.

Oracles: the library's own ``Index.search`` of the same image file (the server
decodes uploads in a worker process and passes the pixels to ``Index.search``:
the same ids and scores must come back), a NumPy brute force over the stored
vectors for ``/api/similar``, cv2 for thumbnails, the index's own lookups for
browsing.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (pip install 'fastimg[serve]') is not installed")

import cv2  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import fastimg  # noqa: E402
from _serve import make_collection  # noqa: E402
from fastimg.serve import create_app  # noqa: E402
from fastimg.serve.sandbox import DecodeFailed, DecoderPool  # noqa: E402

K = 8


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("serve_api"))


@pytest.fixture(scope="module")
def client(collection):
    app = create_app(collection[0], decode_workers=1)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def library(collection):
    with fastimg.Index.open(collection[0]) as ix:
        yield ix


def upload(client, path: Path, **form):
    with open(path, "rb") as fh:
        return client.post("/api/search", files={"image": (path.name, fh.read(), "image/jpeg")},
                           data={k: str(v) for k, v in form.items()})


def assert_error(resp, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}, doc
    assert doc["error"]["code"] == code, doc
    assert "Traceback" not in resp.text and "/site-packages/" not in resp.text
    return doc["error"]["message"]


# --------------------------------------------------------------------------- #
# search
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("metric", [None, "cosine", "l1"])
def test_upload_search_is_the_library_search_of_that_file(client, library, collection, metric):
    for q in collection[2][::3]:
        form = {"k": K} | ({"metric": metric} if metric else {})
        resp = upload(client, q, **form)
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        want = library.search(str(q), k=K, metric=metric, exclude_self=False)
        assert [r["id"] for r in doc["results"]] == [h.id for h in want]
        np.testing.assert_allclose([r["score"] for r in doc["results"]], [h.score for h in want], rtol=1e-6)
        assert [r["rank"] for r in doc["results"]] == list(range(1, K + 1))
        assert doc["metric"] == (metric or library.metric) and doc["mode"] == "auto"
        assert [r["name"] for r in doc["results"]] == [os.path.relpath(h.path, library.root) for h in want]
        assert all(r["thumbnail"] == f"/api/images/{r['id']}/thumbnail" for r in doc["results"])


def test_upload_of_an_indexed_image_finds_it_and_its_copy_first(client, library, collection):
    first, dup = collection[1][0], collection[1][-1]
    ids = {library.id_of(str(first)), library.id_of(str(dup))}
    doc = upload(client, first, k=3, metric="l2").json()
    assert {r["id"] for r in doc["results"][:2]} == ids
    assert doc["results"][0]["score"] == pytest.approx(0.0, abs=1e-6)


def test_search_options_as_query_parameters_are_the_form_fields(client, library, collection):
    q = collection[2][1]
    with open(q, "rb") as fh:
        data = fh.read()
    files = {"image": (q.name, data, "image/jpeg")}
    want = library.search(str(q), k=3, metric="l1", exclude_self=False)
    by_query = client.post("/api/search?k=3&metric=l1", files=files)
    assert by_query.status_code == 200, by_query.text
    assert [r["id"] for r in by_query.json()["results"]] == [h.id for h in want]
    assert by_query.json()["metric"] == "l1"
    # the same value both ways is fine; different values are an error naming the option
    same = client.post("/api/search?k=3", files=files, data={"k": "3", "metric": "l1"})
    assert [r["id"] for r in same.json()["results"]] == [h.id for h in want]
    message = assert_error(client.post("/api/search?k=3", files=files, data={"k": "4"}), 400, "bad_request")
    assert "k is given twice" in message
    # without either: the default k of 10
    assert len(client.post("/api/search", files=files).json()["results"]) == min(10, len(library))


def test_similar_is_a_numpy_brute_force_without_the_entry_itself(client, library, collection):
    live = library.live_ids()
    vectors = library.vectors_of(live).astype(np.float64)
    for row in (0, 5, len(live) - 1):
        i = int(live[row])
        d = np.linalg.norm(vectors - vectors[row], axis=1)
        order = [int(live[j]) for j in np.argsort(d, kind="stable") if int(live[j]) != i][:K]
        doc = client.get(f"/api/similar/{i}", params={"k": K, "metric": "l2"}).json()
        assert [r["id"] for r in doc["results"]] == order
        np.testing.assert_allclose([r["score"] for r in doc["results"]],
                                   [d[np.searchsorted(live, j)] for j in order], rtol=1e-5, atol=1e-6)
        assert doc["query"] == {"id": i}
    # the exact copy of image 0 ranks first (score 0), the entry itself is left out
    first, dup = library.id_of(str(collection[1][0])), library.id_of(str(collection[1][-1]))
    doc = client.get(f"/api/similar/{first}", params={"k": 3, "metric": "l2"}).json()
    assert doc["results"][0]["id"] == dup and doc["results"][0]["score"] == pytest.approx(0.0, abs=1e-6)
    assert first not in [r["id"] for r in doc["results"]]


def test_rerank_and_exact_mode_are_passed_to_the_library(client, library):
    doc = client.get("/api/similar/2", params={"k": 5, "rerank": "qe", "mode": "exact"}).json()
    want = library.similar(2, k=5, rerank="qe", mode="exact")
    assert [r["id"] for r in doc["results"]] == [h.id for h in want]


# --------------------------------------------------------------------------- #
# browsing, metadata, thumbnails
# --------------------------------------------------------------------------- #

def test_browse_pages_cover_the_live_entries_in_id_order(client, library):
    seen = []
    offset = 0
    while True:
        doc = client.get("/api/images", params={"offset": offset, "limit": 7}).json()
        assert doc["total"] == len(library)
        seen += doc["images"]
        if not doc["images"]:
            break
        offset += len(doc["images"])
    assert [e["id"] for e in seen] == library.live_ids().tolist()
    assert [e["name"] for e in seen] == [os.path.relpath(e.path, library.root) for e in library]


def test_image_metadata(client, library, collection):
    i = library.id_of(str(collection[1][3]))
    doc = client.get(f"/api/images/{i}").json()
    e = library.entry(i)
    assert doc["id"] == i and doc["size"] == e.size == collection[1][3].stat().st_size
    assert doc["name"] == os.path.relpath(e.path, library.root) and doc["is_file"] is True
    assert doc["similar"] == f"/api/similar/{i}" and doc["thumbnail"] == f"/api/images/{i}/thumbnail"
    assert str(library.path) not in str(doc)  # no server path goes out


def test_thumbnail_is_a_small_jpeg_of_that_image_and_is_cached(client, library, collection):
    path = collection[1][5]
    i = library.id_of(str(path))
    resp = client.get(f"/api/images/{i}/thumbnail")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
    thumb = cv2.imdecode(np.frombuffer(resp.content, np.uint8), cv2.IMREAD_COLOR)
    full = cv2.imread(str(path))
    h, w = full.shape[:2]
    assert max(thumb.shape[:2]) == min(256, max(h, w))
    assert abs(thumb.shape[0] / thumb.shape[1] - h / w) < 0.02
    # the same picture: compare with OpenCV's own shrink of the original
    ref = cv2.resize(full, (thumb.shape[1], thumb.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(thumb.astype(int) - ref.astype(int)).mean() < 6
    again = client.get(f"/api/images/{i}/thumbnail", headers={"If-None-Match": resp.headers["etag"]})
    assert again.status_code == 304
    svc = client.app.state.fastimg
    misses = svc.thumbnails.misses
    assert client.get(f"/api/images/{i}/thumbnail").content == resp.content
    assert svc.thumbnails.misses == misses  # served from the cache


def test_files_are_served_by_id_only(client):
    for url in ["/api/images/..%2F..%2F..%2Fetc%2Fpasswd/thumbnail", "/api/images/%2Fetc%2Fpasswd",
                "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd", "/static/../app.py", "/api/images/-1/thumbnail"]:
        resp = client.get(url)
        assert resp.status_code in (400, 404), (url, resp.status_code)
        assert "root:" not in resp.text and "import" not in resp.text
        assert_error(resp, resp.status_code, "bad_request" if resp.status_code == 400 else "not_found")


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #

def test_bad_uploads_are_json_errors(client, collection, tmp_path):
    msg = assert_error(client.post("/api/search", files={"image": ("notes.txt", b"hello, world", "text/plain")}),
                       415, "not_an_image")
    assert msg.startswith("notes.txt: not an image")
    data = collection[2][0].read_bytes()
    msg = assert_error(client.post("/api/search", files={"image": ("half.jpg", data[:len(data) // 2])}),
                       400, "bad_image")
    assert msg.startswith("half.jpg: truncated")
    assert_error(client.post("/api/search", files={"image": ("empty.jpg", b"")}), 415, "not_an_image")
    assert_error(client.post("/api/search", data={"k": "3"}), 400, "bad_request")  # no file
    # a PNG of 30000 x 30000 pixels (header only): the pixel limit, before decoding
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    png = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
           + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))
    assert_error(client.post("/api/search", files={"image": ("huge.png", png)}), 413, "too_large")


@pytest.mark.parametrize("query, code, status, words", [
    ({"k": 0}, "bad_request", 400, "k"),
    ({"k": 1001}, "bad_request", 400, "at most 1000"),
    ({"k": "many"}, "bad_request", 400, "k"),
    ({"metric": "euclid"}, "bad_request", 400, "unknown metric 'euclid'"),
    ({"mode": "fast"}, "bad_request", 400, "mode"),
    ({"mode": "ann"}, "bad_request", 400, "graph"),
    ({"rerank": "bogus"}, "bad_request", 400, "bogus"),
])
def test_bad_parameters_are_400(client, query, code, status, words):
    msg = assert_error(client.get("/api/similar/1", params=query), status, code)
    assert words in msg


def test_unknown_ids_routes_and_methods(client, library):
    n = int(library.vectors.shape[0])
    assert "no live entry with id" in assert_error(client.get(f"/api/similar/{n + 5}"), 404, "not_found")
    assert_error(client.get(f"/api/images/{n + 5}"), 404, "not_found")
    assert_error(client.get(f"/api/images/{n + 5}/thumbnail"), 404, "not_found")
    assert_error(client.get("/api/nothing"), 404, "not_found")
    assert_error(client.put("/api/search"), 405, "method_not_allowed")
    assert_error(client.get("/api/images", params={"limit": 10_000}), 400, "bad_request")


def test_too_large_uploads_are_413_before_decoding(collection):
    big = collection[2][0].read_bytes()
    small = cv2.imencode(".jpg", np.full((16, 24, 3), 90, np.uint8))[1].tobytes()
    limit = min(4096, len(big) - 1)  # (generated fixture photos can be under 4 KB)
    assert len(small) < limit < len(big)
    app = create_app(collection[0], max_upload_bytes=limit, decode_workers=1)
    with TestClient(app, raise_server_exceptions=False) as c:
        resp = c.post("/api/search", files={"image": ("big.jpg", big, "image/jpeg")})
        assert f"larger than the limit of {limit:,} bytes" in assert_error(resp, 413, "too_large")
        assert c.app.state.fastimg.pool.failures == {}  # never reached a decoder
        assert c.post("/api/search", files={"image": ("small.jpg", small)}).status_code == 200


def test_an_unexpected_error_is_a_500_without_details(client, monkeypatch):
    svc = client.app.state.fastimg

    def broken(*a, **kw):
        raise RuntimeError("secret /srv/internal/path")

    monkeypatch.setattr(svc.reader, "similar", broken)
    resp = client.get("/api/similar/1")
    msg = assert_error(resp, 500, "internal")
    assert "secret" not in resp.text and "RuntimeError" in msg


def test_a_decoder_crash_or_hang_is_a_json_error_and_the_server_goes_on(client, collection, monkeypatch):
    svc = client.app.state.fastimg
    pool = DecoderPool(workers=1, timeout=1.0, _test_hooks=True)
    try:
        monkeypatch.setattr(svc, "pool", pool)
        monkeypatch.setattr(pool, "describe", lambda path, spec, source: pool.call("crash", source=source))
        msg = assert_error(upload(client, collection[2][0]), 422, "decoder_crashed")
        assert "decoder crashed" in msg and "signal" in msg
        monkeypatch.setattr(pool, "describe", lambda path, spec, source: pool.call("sleep", 30, source=source))
        assert "timeout" in assert_error(upload(client, collection[2][0]), 503, "decode_timeout")
        assert pool.restarts == 2
        monkeypatch.undo()
        assert upload(client, collection[2][0]).status_code == 200
    finally:
        pool.close()


def test_decoder_pool_limits(collection):
    pool = DecoderPool(workers=1, timeout=20.0, memory=256 << 20, _test_hooks=True)
    try:
        pid = pool.pids()[0]
        with pytest.raises(DecodeFailed, match="decoder crashed.*signal 11"):
            pool.call("crash", source="x")
        assert pool.pids() != [pid]
        with pytest.raises(fastimg.ImageError, match="too large.*out of memory"):
            pool.call("allocate", 1 << 30, source="big")  # over the 256 MiB cap: refused inside the worker
        img = pool.decode(str(collection[2][1]), 100, source="q")
        ref = fastimg.load_image(str(collection[2][1]), max_side=100)
        assert np.array_equal(img, ref)
    finally:
        pool.close()
    with pytest.raises(fastimg.FastimgError, match="closed"):
        pool.decode(str(collection[2][1]), source="q")


def test_decoder_pool_describes_as_the_library_does(collection):
    """The worker's vector (decoded there, described by the compiled kernels) is the
    library's single-image vector (NumPy path, this process) bit for bit."""
    spec = fastimg.get_descriptor("classic").spec()
    pool = DecoderPool(workers=1, descriptor=spec)
    try:
        for q in collection[2][:3]:
            got = pool.describe(str(q), spec, source=q.name)
            assert got.dtype == np.float32 and got.shape == (spec["dim"],)
            assert np.array_equal(got, fastimg.describe(str(q), "classic"))
        # another descriptor than the warmed one: built on demand
        hsv = fastimg.get_descriptor("hsv72").spec()
        assert np.array_equal(pool.describe(str(collection[2][0]), hsv, source="q"),
                              fastimg.describe(str(collection[2][0]), "hsv72"))
        with pytest.raises(fastimg.DescriptorError, match="version"):
            pool.describe(str(collection[2][0]), {**spec, "version": spec["version"] + 1}, source="q")
        with pytest.raises(fastimg.ImageError, match="not an image|unsupported"):
            pool.describe(__file__, spec, source="test.py")
    finally:
        pool.close()


# --------------------------------------------------------------------------- #
# writes, CORS, read-only, metrics
# --------------------------------------------------------------------------- #

def test_writes_are_off_without_a_token(client, collection):
    with open(collection[2][0], "rb") as fh:
        resp = client.post("/api/images", files={"image": ("a.jpg", fh.read())})
    assert "--token-file" in assert_error(resp, 403, "writes_disabled")
    assert_error(client.delete("/api/images/1"), 403, "writes_disabled")
    assert client.get("/api/info").json()["writable"] is False


def test_writes_with_the_token(collection, tmp_path):
    src = collection[0]
    ixpath = tmp_path / "copy.fastimg"
    shutil.copytree(src, ixpath)
    token = "s3cret-token"
    app = create_app(ixpath, token=token, decode_workers=1, upload_dir=str(tmp_path / "uploads"))
    auth = {"Authorization": f"Bearer {token}"}
    new = collection[2][1]
    with TestClient(app, raise_server_exceptions=False) as c:
        body = {"image": ("new photo.jpg", new.read_bytes(), "image/jpeg")}
        assert_error(c.post("/api/images", files=body), 401, "unauthorized")
        assert_error(c.post("/api/images", files=body, headers={"Authorization": "Bearer wrong"}), 401,
                     "unauthorized")
        assert_error(c.post("/api/images", files={"image": ("x.txt", b"text")}, headers=auth), 415, "not_an_image")
        resp = c.post("/api/images", files=body, headers=auth)
        assert resp.status_code == 201, resp.text
        doc = resp.json()
        i = doc["id"]
        assert doc["added"] is True and doc["metadata"]["uploaded_as"] == "new photo.jpg"
        stored = list((tmp_path / "uploads").iterdir())
        assert len(stored) == 1 and stored[0].read_bytes() == new.read_bytes()
        # the read handle sees the commit: searching by that image finds it first
        hits = c.post("/api/search", files=body, data={"k": "2"}).json()["results"]
        assert hits[0]["id"] == i and hits[0]["score"] == pytest.approx(0.0, abs=1e-6)
        again = c.post("/api/images", files=body, headers=auth)
        assert again.status_code == 200 and again.json()["id"] == i and again.json()["added"] is False
        assert_error(c.delete(f"/api/images/{i}"), 401, "unauthorized")
        resp = c.delete(f"/api/images/{i}", headers=auth)
        assert resp.status_code == 200 and resp.json()["removed"] == i
        assert not stored[0].exists()
        assert_error(c.get(f"/api/images/{i}"), 404, "not_found")
        assert_error(c.delete(f"/api/images/{i}", headers=auth), 404, "not_found")
        assert i not in [r["id"] for r in c.get("/api/similar/0", params={"k": 50}).json()["results"]]
    with fastimg.Index.open(ixpath) as ix:  # the library agrees
        assert i not in ix and len(ix) == len(collection[1])


def test_cors_is_off_unless_allowed(client, collection):
    origin = {"Origin": "http://evil.example"}
    assert "access-control-allow-origin" not in client.get("/api/info", headers=origin).headers
    app = create_app(collection[0], allow_origins=["http://app.example"], decode_workers=1)
    with TestClient(app) as c:
        ok = c.get("/api/info", headers={"Origin": "http://app.example"})
        assert ok.headers["access-control-allow-origin"] == "http://app.example"
        assert "access-control-allow-origin" not in c.get("/api/info", headers=origin).headers


def test_a_read_only_server_writes_nothing_into_the_index(collection, tmp_path):
    ixpath = tmp_path / "ro.fastimg"
    shutil.copytree(collection[0], ixpath)

    def state():
        return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in ixpath.rglob("*")
                if not p.name.endswith(("-shm", "-wal"))}  # SQLite's coordination files (README)

    before = state()
    with TestClient(create_app(ixpath, decode_workers=1)) as c:
        for metric in ("cosine", "l2", "pearson"):
            assert c.get("/api/similar/1", params={"metric": metric}).status_code == 200
        assert upload(c, collection[2][0]).status_code == 200
    assert state() == before


def test_info_healthz_and_metrics(client, library):
    info = client.get("/api/info").json()
    assert info["count"] == len(library) and info["dim"] == library.dim and info["metric"] == library.metric
    assert info["descriptor"] == "hsv72" and info["search_by_image"] is True
    assert {m["name"] for m in info["metrics"]} >= {"bhattacharyya", "cosine", "l2"}
    assert client.get("/healthz").json() == {"status": "ok", "count": len(library)}
    before = client.get("/metrics").text
    pattern = r'fastimg_http_requests_total\{method="GET",route="/api/similar/\{id\}",status="200"\} (\d+)'
    n0 = int(m.group(1)) if (m := re.search(pattern, before)) else 0
    for i in range(3):
        assert client.get(f"/api/similar/{i}").status_code == 200
    text = client.get("/metrics").text
    assert int(re.search(pattern, text).group(1)) == n0 + 3
    assert f"fastimg_index_images {len(library)}\n" in text
    count = re.search(r'fastimg_http_request_duration_seconds_count\{route="/api/similar/\{id\}"\} (\d+)', text)
    inf = re.search(r'fastimg_http_request_duration_seconds_bucket\{route="/api/similar/\{id\}",le="\+Inf"\} (\d+)',
                    text)
    assert int(count.group(1)) == int(inf.group(1)) >= n0 + 3
    assert client.get("/metrics").headers["content-type"].startswith("text/plain; version=0.0.4")


def test_the_page_and_the_openapi_schema(client):
    page = client.get("/")
    assert page.status_code == 200 and "static/app.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in re.sub(r'https?://www\.w3\.org[^"]*', "", page.text)  # nothing from a CDN
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "api/search" in js.text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/search", "/api/similar/{id}", "/api/images", "/api/images/{id}",
            "/api/images/{id}/thumbnail", "/api/info", "/healthz", "/metrics"} <= set(paths)
    assert client.get("/docs").status_code == 200


def test_create_app_errors(tmp_path):
    with pytest.raises(fastimg.IndexNotFoundError):
        create_app(tmp_path / "missing.fastimg")
    with pytest.raises(fastimg.FastimgError, match="max_k"):
        create_app(tmp_path / "missing.fastimg", max_k=0)


def test_links_under_a_mount_carry_its_prefix(collection, library):
    """``parent.mount("/photos", create_app(...))``: the thumbnail and similar links of
    every answer start with the mount's prefix, and they answer there."""
    from fastapi import FastAPI

    sub = create_app(collection[0], decode_workers=1)
    parent = FastAPI()
    parent.mount("/photos", sub)
    try:
        with TestClient(parent) as c:
            hits = c.get("/photos/api/similar/1", params={"k": 3}).json()["results"]
            assert [h["thumbnail"] for h in hits] == [f"/photos/api/images/{h['id']}/thumbnail" for h in hits]
            assert [h["name"] for h in hits] == [os.path.relpath(library.entry(h["id"]).path, library.root)
                                                  for h in hits]
            page = c.get("/photos/api/images", params={"limit": 2}).json()["images"]
            assert [e["thumbnail"] for e in page] == [f"/photos/api/images/{e['id']}/thumbnail" for e in page]
            meta = c.get(f"/photos/api/images/{hits[0]['id']}").json()
            assert meta["similar"] == f"/photos/api/similar/{hits[0]['id']}"
            thumb = c.get(hits[0]["thumbnail"])
            assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    finally:
        sub.state.fastimg.close()
