"""The FastAPI application of ``fastimg serve``: :func:`create_app`.

Routes (JSON unless said; the OpenAPI schema at ``/openapi.json``, its page at
``/docs``):

=====================================  ==================================================
``GET /``                              the page (``static/``: plain HTML, CSS and a script)
``POST /api/search``                   multipart ``image`` (+ ``k``, ``metric``, ``mode``, ``rerank``)
``GET /api/similar/{id}``              search by an indexed image (its stored vector)
``GET /api/images``                    browse: ``offset``, ``limit``
``GET /api/images/{id}``               one image's metadata
``GET /api/images/{id}/thumbnail``     a JPEG thumbnail (made on demand, cached)
``GET /api/info``                      the index: count, descriptor, metrics ...
``GET /healthz``                       liveness
``GET /metrics``                       Prometheus text
``POST /api/images``                   upload and add (token)
``DELETE /api/images/{id}``            remove from the index (token)
=====================================  ==================================================

Every error is ``{"error": {"code": ..., "message": ...}}`` with its status
(:data:`ERROR_STATUS`); no traceback reaches a client (unexpected errors are
logged on the server, the client gets a 500 ``internal`` error).

**Safety.**  Images come in only as uploads: size-limited (a ``Content-Length``
over the limit is refused before reading, a chunked body is cut off at the
limit), streamed to a temporary file, decoded and described (the index's
descriptor, the library's code) in a worker process with memory and time limits
(:mod:`fastimg.serve.sandbox`; a crash or a timeout is a JSON error and a fresh
worker), then searched with ``Index.search(vector)``.  Files go out only as thumbnails of
indexed entries named by id (a path from the request is never opened), made in
the same worker processes.  Writes (``POST``/``DELETE /api/images``) need the
bearer token; without one they are off and the index is opened read-only only.
CORS is off unless origins are allowed.

**Concurrency.**  Requests run in the server's thread pool (never on
the event loop).  Searches and lookups go through one read-only
:class:`fastimg.Index` handle per server process, shared by every request
thread (the README's threading note: the library's reads take no handle-wide
lock and its scan releases the GIL), opened with ``threads=1``: under
concurrent requests one OpenMP thread per search beats a team per search.
Writes go through one writer handle (its calls are serialised by the library;
writes need a single server process); the read handle sees each commit on its
next call.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from fastapi import FastAPI, File, Form, Path as PathParam, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import fastimg
from fastimg.errors import (
    ArgumentError,
    DescriptorError,
    FastimgError,
    ImageError,
    IndexChangedError,
    IndexNotFoundError,
    NotInIndexError,
)
from fastimg.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from fastimg.serve.metrics import Metrics
from fastimg.serve.sandbox import DecodeFailed, DecoderPool, PoolClosed

__all__ = ["create_app", "Settings", "ERROR_STATUS", "ApiError"]

log = logging.getLogger("fastimg.serve")

STATIC = Path(__file__).resolve().parent / "static"

#: HTTP status of each error code the API returns.
ERROR_STATUS = {
    "bad_request": 400,          # a bad parameter (k, metric, mode, rerank ...)
    "not_an_image": 415,         # an upload that is no image fastimg reads
    "bad_image": 400,            # an image that cannot be decoded (truncated, corrupt ...)
    "too_large": 413,            # an upload over the size limit, or an image over the pixel limit
    "decoder_crashed": 422,      # the decoding process died on this image (it was replaced)
    "decode_timeout": 503,       # decoding took longer than the limit (the server may be busy)
    "unauthorized": 401,         # a write without the right bearer token
    "writes_disabled": 403,      # a write while the server has no token (the write API is off)
    "not_found": 404,            # an unknown id, an unknown route
    "no_thumbnail": 404,         # an entry without a readable image file (a vector, a vanished file)
    "method_not_allowed": 405,
    "conflict": 409,             # the index changed meanwhile (compacted); retry
    "unsupported": 400,          # the index cannot do this (e.g. describe images: custom vectors)
    "internal": 500,
}

#: ImageError reasons that mean "not an image" (415); the other reasons are a bad image (400).
_NOT_IMAGE = {"not an image", "unsupported format", "empty file"}


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with ``ERROR_STATUS[code]``."""

    def __init__(self, code: str, message: str, headers: Optional[dict] = None):
        self.code, self.message, self.headers = code, message, headers
        super().__init__(message)


def _error_response(code: str, message: str, headers: Optional[dict] = None, status: Optional[int] = None
                    ) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status or ERROR_STATUS[code],
                        headers=headers)


@dataclass(frozen=True)
class Settings:
    """Everything :func:`create_app` takes besides the index path (all optional).

    Attributes
    ----------
    token : str or None
        Bearer token of the write API (``POST``/``DELETE /api/images``); None:
        writes are off and the index is only opened read-only.
    allow_origins : sequence of str
        Origins allowed by CORS (``"*"`` for any); empty: CORS off.
    max_upload_bytes : int
        Largest accepted request body (413 beyond), default 32 MiB.
    max_pixels : int or None
        The loader's pixel limit for uploads and thumbnails (None: the
        loader's default, 100 MP).
    decode_workers : int or None
        Decoder processes of this server process: they decode and describe
        uploads and make thumbnails (None: 2, or 1 when this process may use
        one core only).
    decode_timeout : float
        Seconds one decode may take before its process is killed (default 10).
    decode_memory : int or None
        Bytes a decoder process may allocate beyond its start-up size (default
        1 GiB; None: no cap).
    thumbnail_side : int
        Longer side of thumbnails in pixels (default 256).
    thumbnail_cache_bytes : int
        Memory kept for thumbnails (least recently used dropped first; 64 MiB).
    search_threads : int or None
        ``threads=`` of the index handles: OpenMP threads per search (default
        1: concurrent requests use the cores; None: all cores per search).
    max_k : int
        Largest ``k`` (default 1000); ``max_page``: largest browse page (500).
    upload_dir : str or None
        Where ``POST /api/images`` stores uploaded files (named by content
        hash) before adding them; default ``<index root>/fastimg-uploads``.
    """

    token: Optional[str] = None
    allow_origins: Sequence[str] = ()
    max_upload_bytes: int = 32 << 20
    max_pixels: Optional[int] = None
    decode_workers: Optional[int] = None
    decode_timeout: float = 10.0
    decode_memory: Optional[int] = 1 << 30
    thumbnail_side: int = 256
    thumbnail_cache_bytes: int = 64 << 20
    search_threads: Optional[int] = 1
    max_k: int = 1000
    max_page: int = 500
    upload_dir: Optional[str] = None

    def __post_init__(self) -> None:
        if self.token is not None and not self.token.strip():
            raise ArgumentError("the write token is empty")
        if self.decode_workers is not None and int(self.decode_workers) < 1:
            raise ArgumentError(f"decode_workers must be >= 1 (or None: the default); got {self.decode_workers!r}")
        for name in ("max_upload_bytes", "thumbnail_side", "max_k", "max_page"):
            if int(getattr(self, name)) < 1:
                raise ArgumentError(f"{name} must be >= 1; got {getattr(self, name)!r}")


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover
        return max(1, os.cpu_count() or 1)


class _Thumbnails:
    """An LRU of JPEG bytes bounded by their total size."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self._data: "OrderedDict[tuple, bytes]" = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple) -> Optional[bytes]:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple, value: bytes) -> None:
        if len(value) > self.capacity:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._size -= len(old)
            self._data[key] = value
            self._size += len(value)
            while self._size > self.capacity:
                _, dropped = self._data.popitem(last=False)
                self._size -= len(dropped)

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self._data)


class Service:
    """What the routes use: the index handles, the decoder pool, the caches, the counters."""

    def __init__(self, index_path: str, settings: Settings):
        self.index_path = str(index_path)
        self.settings = settings
        self.started = time.time()
        self.reader = fastimg.Index.open(self.index_path, "r", threads=settings.search_threads)
        self.writer = None
        self.pool: Optional[DecoderPool] = None
        try:
            if settings.token:
                self.writer = fastimg.Index.open(self.index_path, "a", threads=settings.search_threads)
            self.custom = self.reader.descriptor_spec.get("name") == "custom"
            # the descriptor's working size: uploads are decoded at it (Index.search would shrink them to it)
            self.max_side = None if self.custom else self.reader.descriptor.max_side
            self.pool = DecoderPool(workers=settings.decode_workers or min(2, _cores()),
                                    timeout=settings.decode_timeout, memory=settings.decode_memory,
                                    max_pixels=settings.max_pixels,
                                    descriptor=None if self.custom else self.reader.descriptor_spec)
            live = self.reader.live_ids()
            if live.size:
                # the scan's set-up happens here, not in the first request (the decoder
                # processes load the descriptor's kernels meanwhile)
                self.reader.similar(int(live[0]), k=1)
            if self.writer is not None and not self.custom:
                # the writer describes added files with the compiled kernels: load them now (a second
                # or a few, mostly holding the GIL) rather than in the middle of the first write
                import numpy as np

                self.writer.descriptor.compute(np.full((64, 64, 3), 128, np.uint8))
            # the server answers once its decoder processes have started (a second or a few:
            # they load the descriptor's kernels), so that no request waits for that
            self.pool.wait_ready()
        except BaseException:
            self.close()
            raise
        self.thumbnails = _Thumbnails(settings.thumbnail_cache_bytes)
        self.metrics = Metrics()
        root = self.reader.root
        self.upload_dir = Path(settings.upload_dir) if settings.upload_dir else Path(root) / "fastimg-uploads"
        self._nonneg: Optional[bool] = None

    def index(self) -> Any:
        """The read-only handle every request thread shares."""
        return self.reader

    def close(self) -> None:
        """Stop the decoder processes and close the handles (idempotent)."""
        if self.pool is not None:
            self.pool.close()
        self.reader.close()
        if self.writer is not None:
            self.writer.close()

    # ------------------------------------------------------------------ helpers
    def name(self, path: str) -> str:
        """What the API shows for an entry's path: relative to the index root when under it."""
        return _display_name(path, str(self.reader.root))

    def metrics_available(self) -> list[dict]:
        """The metrics this index can be searched with (histogram metrics need non-negative vectors)."""
        from fastimg.metrics import METRICS

        if self._nonneg is None:
            ix = self.index()
            ids = ix.live_ids()[:1000]
            self._nonneg = bool(ids.size == 0 or float(ix.vectors_of(ids).min()) >= 0.0)
        return [{"name": m.name, "higher_is_better": m.higher_is_better} for m in METRICS.values()
                if self._nonneg or not m.nonneg]


# --------------------------------------------------------------------------- #
# the ASGI guard: body limit, metrics, headers
# --------------------------------------------------------------------------- #

class _TooLarge(Exception):
    pass


class _Guard:
    """Outermost application middleware: refuses bodies over the limit (413, before
    reading when ``Content-Length`` says so, else when the count passes it),
    counts every request for ``/metrics`` and adds ``X-Content-Type-Options``."""

    def __init__(self, app: ASGIApp, service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        limit = self.service.settings.max_upload_bytes
        state = {"status": 500, "started": False, "too_large": False, "received": 0}
        too_large_msg = f"the request body is larger than the limit of {limit:,} bytes"

        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    await _send_error(send, "too_large", too_large_msg, state)
                    self._observe(scope, state, start)
                    return

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["too_large"] = True
                    raise _TooLarge(too_large_msg)
            return message

        async def guarded_send(message: Message) -> None:
            if state["too_large"] and not state["started"]:
                # whatever the app made of the interrupted body, the answer is 413
                if message["type"] == "http.response.start":
                    await _send_error(send, "too_large", too_large_msg, state)
                return
            if state["too_large"]:
                return
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                headers = list(message.get("headers") or [])
                headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            if not state["started"]:
                await _send_error(send, "too_large", too_large_msg, state)
        finally:
            self._observe(scope, state, start)

    def _observe(self, scope: Scope, state: dict, start: float) -> None:
        route = scope.get("route")
        label = getattr(route, "path", None) or ("/static" if scope.get("path", "").startswith("/static/")
                                                 else "(unmatched)")
        self.service.metrics.observe(scope.get("method", "?"), label, state["status"], time.perf_counter() - start)


async def _send_error(send: Send, code: str, message: str, state: dict) -> None:
    import json

    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    state["status"], state["started"] = ERROR_STATUS[code], True
    await send({"type": "http.response.start", "status": ERROR_STATUS[code],
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), (b"x-content-type-options", b"nosniff")]})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #

def _image_error(exc: ImageError, name: str) -> ApiError:
    detail = f" ({exc.detail})" if exc.detail else ""
    if exc.reason == "too large":
        return ApiError("too_large", f"{name}: too large{detail}")
    if exc.reason in _NOT_IMAGE:
        return ApiError("not_an_image", f"{name}: {exc.reason}{detail}")
    if exc.reason == "unsupported":
        return ApiError("unsupported", f"{exc.reason}{detail}")
    return ApiError("bad_image", f"{name}: {exc.reason}{detail}")


def _api_error(exc: Exception, index_path: str) -> Optional[ApiError]:
    """The ApiError of a library exception (None: unexpected); the server's own
    index path is cut out of the library's messages."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, NotInIndexError):
        return ApiError("not_found", str(exc).replace(index_path + ": ", ""))
    if isinstance(exc, DecodeFailed):
        code = "decode_timeout" if exc.reason == "timeout" else "decoder_crashed"
        return ApiError(code, str(exc))
    if isinstance(exc, ImageError):
        return _image_error(exc, os.path.basename(exc.source))
    if isinstance(exc, IndexChangedError):
        return ApiError("conflict", "the index was compacted meanwhile (its ids were renumbered); retry")
    if isinstance(exc, DescriptorError):
        return ApiError("unsupported", str(exc))
    if isinstance(exc, (ArgumentError, ValueError)) and isinstance(exc, FastimgError):
        return ApiError("bad_request", str(exc))
    if isinstance(exc, PoolClosed):
        return ApiError("internal", "the server is shutting down")
    return None


_STATUS_CODE = {400: "bad_request", 401: "unauthorized", 403: "writes_disabled", 404: "not_found",
                405: "method_not_allowed", 413: "too_large", 415: "not_an_image"}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODE.get(exc.status_code, "internal" if exc.status_code >= 500 else "bad_request")
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such route: {request.method} {request.url.path}"
        if exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return _error_response(code, message, getattr(exc, "headers", None), status=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path", "form")]
            parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
        return _error_response("bad_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(FastimgError)
    async def library_error(request: Request, exc: FastimgError) -> JSONResponse:
        api = _api_error(exc, str(request.app.state.fastimg.reader.path))
        if api is None:
            log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
            return _error_response("internal", f"internal error ({type(exc).__name__}; see the server's log)")
        return _error_response(api.code, api.message, api.headers)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error_response("internal", f"internal error ({type(exc).__name__}; see the server's log)")

    app.add_exception_handler(Exception, unexpected)


# --------------------------------------------------------------------------- #
# the application
# --------------------------------------------------------------------------- #

def _display_name(path: str, root: str) -> str:
    """An entry's path as the API shows it: relative to ``root`` when under it."""
    if path.startswith(root) and path[len(root):len(root) + 1] == os.sep:  # the usual case, without a syscall
        return path[len(root) + 1:]
    try:
        if os.path.commonpath([root, path]) == root:
            return os.path.relpath(path, root)
    except ValueError:  # different drives, a relative name
        pass
    return os.path.basename(path) if os.path.isabs(path) else path


class _Links:
    """What one response needs to show entries: the index root and the routes' URL
    prefix (behind a mount or a proxy's root path too), each read once per request
    rather than once per entry."""

    __slots__ = ("root", "images")

    def __init__(self, svc: Service, request: Request):
        self.root = str(svc.index().root)
        url = request.url_for("thumbnail", id="0").path  # .../api/images/0/thumbnail
        self.images = url[:-len("0/thumbnail")]

    def name(self, path: str) -> str:
        return _display_name(path, self.root)

    def thumbnail(self, id: int) -> str:
        return f"{self.images}{id}/thumbnail"


def _hit_json(links: _Links, h: Any) -> dict:
    return {"rank": h.rank, "id": h.id, "name": links.name(h.path), "score": h.score,
            "thumbnail": links.thumbnail(h.id)}


def _entry_json(links: _Links, request: Request, e: Any, full: bool = False) -> dict:
    doc = {"id": e.id, "name": links.name(e.path), "thumbnail": links.thumbnail(e.id) if e.is_file else None}
    if full:
        doc.update({"is_file": e.is_file, "size": e.size,
                    "mtime": None if e.mtime_ns is None else e.mtime_ns / 1e9, "added": e.added,
                    "metadata": e.metadata, "similar": request.url_for("similar", id=str(e.id)).path})
    return doc


def _save_upload(upload: UploadFile, directory: Optional[Path], limit: int) -> tuple[str, str]:
    """Copy an upload to a new temporary file (in ``directory``); ``(path, blake2b-128 hex)``."""
    src = upload.file
    src.seek(0)
    h = hashlib.blake2b(digest_size=16)
    fd, path = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=directory)
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise ApiError("too_large", f"the upload is larger than the limit of {limit:,} bytes")
                h.update(chunk)
                out.write(chunk)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    if size == 0:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise ApiError("not_an_image", f"{_upload_name(upload)}: empty file")
    return path, h.hexdigest()


def _with_upload(svc: Service, upload: UploadFile, name: str, keep_in: Optional[Path],
                 work: Callable[[str], Any]) -> tuple[Any, str, str]:
    """``(work(temporary file), temporary file, blake2b hex)`` of an upload saved to a
    temporary file; ``work`` runs it through the decoder pool (an ImageError becomes
    the matching ApiError).  The temporary file is deleted unless ``keep_in`` (its
    folder) is given; then the caller owns it."""
    tmp, digest = _save_upload(upload, keep_in, svc.settings.max_upload_bytes)
    try:
        try:
            out = work(tmp)
        except ImageError as exc:
            raise _image_error(exc, name) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if keep_in is None:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return out, tmp, digest


def _form_or_query(name: str, form: Any, query: Any) -> Any:
    """An option of ``POST /api/search`` given as a form field or a query parameter (None: neither)."""
    if form is not None and query is not None and form != query:
        raise ApiError("bad_request", f"{name} is given twice with different values: {form!r} in the form and "
                                      f"{query!r} in the query string")
    return form if form is not None else query


def _upload_name(upload: UploadFile) -> str:
    return os.path.basename(upload.filename or "") or "upload"


def _check_token(svc: Service, request: Request) -> None:
    token = svc.settings.token
    if token is None:
        raise ApiError("writes_disabled", "the write API is off: start the server with a token "
                                          "(fastimg serve --token-file FILE) to add or remove images")
    auth = request.headers.get("authorization", "")
    scheme, _, given = auth.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError("unauthorized", "a write needs the header 'Authorization: Bearer TOKEN' with the "
                                       "server's token", headers={"WWW-Authenticate": "Bearer"})


_EXT = {"jpeg": ".jpg", "png": ".png", "gif": ".gif", "bmp": ".bmp", "webp": ".webp", "tiff": ".tif",
        "pnm": ".pnm", "jp2": ".jp2", "heif": ".heic", "ico": ".ico"}


def create_app(index_path: Any, settings: Optional[Settings] = None, **kwargs: Any) -> FastAPI:
    """The FastAPI application serving the index at ``index_path``.

    Parameters
    ----------
    index_path : path-like
        An existing index directory.
    settings : Settings, optional
        The server's settings; keyword arguments override its fields (e.g.
        ``create_app(path, token="...", allow_origins=["http://localhost:3000"])``).

    Returns
    -------
    fastapi.FastAPI
        Run it with uvicorn, or mount it in another app
        (``parent.mount("/images", create_app(path))``).  The index is opened
        and the decoder processes started here; they are released when the
        application shuts down (its lifespan), or by ``app.state.fastimg.close()``.

    Raises
    ------
    IndexNotFoundError
        No index at ``index_path``.
    ArgumentError
        A bad setting.
    """
    settings = replace(settings or Settings(), **kwargs)
    path = os.path.abspath(os.fspath(index_path))
    svc = Service(path, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        try:
            yield
        finally:
            svc.close()

    app = FastAPI(
        title="fastimg",
        version=fastimg.__version__,
        description="Search a collection of images by image. Errors: `{\"error\": {\"code\", \"message\"}}`.",
        lifespan=lifespan,
    )
    app.state.fastimg = svc
    _install_error_handlers(app)
    if settings.allow_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.allow_origins),
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(_Guard, service=svc)

    def search_args(k: int, metric: Optional[str], mode: str, rerank: Optional[str]) -> dict:
        if k > settings.max_k:
            raise ApiError("bad_request", f"k must be at most {settings.max_k}; got {k}")
        if rerank:
            from fastimg.rerank import parse_spec

            try:  # the library's parser (it raises a plain ValueError)
                parse_spec(rerank)
            except ValueError as exc:
                raise ApiError("bad_request", str(exc)) from None
        return {"k": k, "metric": metric or None, "mode": mode, "rerank": rerank or None}

    def results(request: Request, ix: Any, hits: list, args: dict, took: float, **extra: Any) -> JSONResponse:
        links = _Links(svc, request)
        return JSONResponse({"results": [_hit_json(links, h) for h in hits], "took_ms": round(took * 1000, 3),
                             "metric": args["metric"] or ix.metric, "mode": args["mode"], **extra})

    # ------------------------------------------------------------------ page
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"),
                            headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                                                "style-src 'self'; script-src 'self'; "
                                                                "object-src 'none'; base-uri 'none'"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # ------------------------------------------------------------------ search
    @app.post("/api/search", tags=["search"], summary="Search by an uploaded image")
    def search(request: Request,
               image: UploadFile = File(..., description="the query image (JPEG, PNG, WebP, ...)"),
               k: Optional[int] = Form(None, ge=1, description="number of results (default 10)"),
               metric: Optional[str] = Form(None, description="ranking metric (default: the index's)"),
               mode: Optional[str] = Form(None, description="auto (default), exact or ann"),
               rerank: Optional[str] = Form(None, description="re-ranking spec, e.g. qe, k-reciprocal"),
               k_q: Optional[int] = Query(None, alias="k", ge=1, description="k as a query parameter"),
               metric_q: Optional[str] = Query(None, alias="metric", description="metric as a query parameter"),
               mode_q: Optional[str] = Query(None, alias="mode", description="mode as a query parameter"),
               rerank_q: Optional[str] = Query(None, alias="rerank", description="rerank as a query parameter"),
               ) -> JSONResponse:
        """The `k` indexed images most similar to the uploaded image, best first (an indexed copy of it
        included). `score` is the metric's value: higher is better for similarities (pearson, cosine,
        intersect), lower for distances. The options are form fields or query parameters
        (`/api/search?k=5`), as `/api/similar/{id}` takes them; giving one both ways with different
        values is an error."""
        k, metric, mode, rerank = (_form_or_query(name, f, q) for name, f, q in (
            ("k", k, k_q), ("metric", metric, metric_q), ("mode", mode, mode_q), ("rerank", rerank, rerank_q)))
        args = search_args(10 if k is None else k, metric, mode or "auto", rerank)
        if svc.custom:
            raise ApiError("unsupported", "this index stores vectors computed elsewhere (descriptor 'custom'): "
                                          "it cannot describe an uploaded image; search by id (/api/similar/{id})")
        name = _upload_name(image)
        t0 = time.perf_counter()
        ix = svc.index()
        spec = ix.descriptor_spec
        assert svc.pool is not None
        # decoded and described in a decoder process (the CPU-heavy part, outside this process'
        # GIL); the vector is searched here exactly as Index.search(pixels) would search it
        vector = _with_upload(svc, image, name, None, lambda tmp: svc.pool.describe(tmp, spec, source=name))[0]
        hits = ix.search(vector, exclude_self=False, **args)
        return results(request, ix, hits, args, time.perf_counter() - t0)

    @app.get("/api/similar/{id}", name="similar", tags=["search"], summary="Search by an indexed image")
    def similar(request: Request, id: int = PathParam(..., ge=0),
                k: int = Query(10, ge=1), metric: Optional[str] = None, mode: str = "auto",
                rerank: Optional[str] = None) -> JSONResponse:
        """The `k` images most similar to indexed image `id` (its stored vector), leaving out exactly
        that entry (an identical copy ranks first)."""
        args = search_args(k, metric, mode, rerank)
        ix = svc.index()
        t0 = time.perf_counter()
        hits = ix.similar(id, **args)
        return results(request, ix, hits, args, time.perf_counter() - t0, query={"id": id})

    # ------------------------------------------------------------------ browse
    @app.get("/api/images", tags=["images"], summary="Browse the collection")
    def images(request: Request, offset: int = Query(0, ge=0), limit: int = Query(48, ge=1)) -> JSONResponse:
        """A page of the live entries, in id order."""
        if limit > settings.max_page:
            raise ApiError("bad_request", f"limit must be at most {settings.max_page}; got {limit}")
        ix = svc.index()
        for attempt in range(3):
            ids = ix.live_ids()
            try:
                page = ix.entries(ids[offset:offset + limit])
                break
            except NotInIndexError:  # compacted between the two reads
                if attempt == 2:
                    raise ApiError("conflict", "the index keeps changing; retry") from None
        links = _Links(svc, request)
        return JSONResponse({"total": int(ids.size), "offset": offset, "limit": limit,
                             "images": [_entry_json(links, request, e) for e in page]})

    def live_entry(ix: Any, id: int) -> Any:
        try:
            e = ix.entry(id)
        except NotInIndexError:
            e = None
        if e is None or e.deleted:
            raise ApiError("not_found", f"no image with id {id}")
        return e

    @app.get("/api/images/{id}", tags=["images"], summary="One image's metadata")
    def image(request: Request, id: int = PathParam(..., ge=0)) -> dict:
        return _entry_json(_Links(svc, request), request, live_entry(svc.index(), id), full=True)

    @app.get("/api/images/{id}/thumbnail", name="thumbnail", tags=["images"], summary="A JPEG thumbnail",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(request: Request, id: int = PathParam(..., ge=0)) -> Response:
        """A JPEG of indexed image `id`, its longer side at most the server's thumbnail size; made on
        demand in a decoder process (with the loader's limits) and cached."""
        e = live_entry(svc.index(), id)
        if not e.is_file:
            raise ApiError("no_thumbnail", f"image {id} is a vector added without a file: no thumbnail")
        side = settings.thumbnail_side
        etag = '"' + hashlib.blake2b(f"{e.path}|{e.size}|{e.mtime_ns}|{e.hash}|{side}".encode(),
                                     digest_size=12).hexdigest() + '"'
        headers = {"ETag": etag, "Cache-Control": "private, max-age=300"}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        key = (e.id, e.path, e.size, e.mtime_ns, side)
        data = svc.thumbnails.get(key)
        if data is None:
            try:
                data = svc.pool.thumbnail(e.path, side, source=f"image {id}")
            except ImageError as exc:
                raise ApiError("no_thumbnail", f"image {id}: its file cannot be read now ({exc.reason})") from None
            svc.thumbnails.put(key, data)
        return Response(data, media_type="image/jpeg", headers=headers)

    # ------------------------------------------------------------------ about
    @app.get("/api/info", tags=["about"], summary="The index and the server's limits")
    def info() -> dict:
        from fastimg.rerank import rerank_names

        ix = svc.index()
        spec = ix.descriptor_spec
        return {"version": fastimg.__version__, "count": len(ix), "descriptor": spec.get("name"), "dim": ix.dim,
                "metric": ix.metric, "metrics": svc.metrics_available(), "modes": ["auto", "exact", "ann"],
                "rerank": rerank_names(), "ann": ix.ann_info(), "writable": svc.writer is not None,
                "search_by_image": not svc.custom, "max_upload_bytes": settings.max_upload_bytes,
                "max_k": settings.max_k, "thumbnail_side": settings.thumbnail_side}

    @app.get("/healthz", tags=["about"], summary="Liveness")
    def healthz() -> dict:
        return {"status": "ok", "count": len(svc.index())}

    @app.get("/metrics", tags=["about"], summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {}}}})
    def metrics() -> Response:
        ix = svc.index()
        gauges = [
            ("fastimg_index_images", "gauge", "Live images in the index.", len(ix)),
            ("fastimg_index_rows", "gauge", "Rows of the vector file (deleted ones included).", ix.vectors.shape[0]),
            ("fastimg_index_vectors_bytes", "gauge", "Size of the vector file in bytes.", ix.vectors.nbytes),
            ("fastimg_decoder_processes", "gauge", "Decoder processes running.", len(svc.pool.pids())),
            ("fastimg_decoder_restarts_total", "counter", "Decoder processes replaced after a crash or a timeout.",
             svc.pool.restarts),
            ("fastimg_thumbnail_cache_hits_total", "counter", "Thumbnails served from the cache.",
             svc.thumbnails.hits),
            ("fastimg_thumbnail_cache_misses_total", "counter", "Thumbnails made on demand.",
             svc.thumbnails.misses),
            ("fastimg_thumbnail_cache_bytes", "gauge", "Bytes held by the thumbnail cache.", svc.thumbnails.size),
            ("fastimg_uptime_seconds", "gauge", "Seconds since the server started.", time.time() - svc.started),
        ]
        return Response(svc.metrics.render(gauges), media_type=METRICS_CONTENT_TYPE)

    # ------------------------------------------------------------------ writes
    upload_schema = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["image"],
        "properties": {"image": {"type": "string", "format": "binary"}}}}}}}

    @app.post("/api/images", status_code=201, tags=["write"], summary="Upload an image and add it",
              openapi_extra=upload_schema)
    async def add_image(request: Request) -> JSONResponse:
        """Needs `Authorization: Bearer TOKEN`. The image is checked in a decoder process, stored in the
        server's upload folder under its content hash and added to the index (201; 200 when that
        content is already there)."""
        from starlette.concurrency import run_in_threadpool

        _check_token(svc, request)  # before reading the body
        async with request.form(max_files=1, max_fields=4) as form:  # closes the spooled upload
            upload = form.get("image")
            if not isinstance(upload, UploadFile) and not hasattr(upload, "file"):
                raise ApiError("bad_request", "the form needs a file field 'image'")
            status, doc = await run_in_threadpool(_add_upload, request, upload)
        return JSONResponse(doc, status_code=status)

    def _add_upload(request: Request, upload: UploadFile) -> tuple[int, dict]:
        from fastimg.image import sniff_format

        name = _upload_name(upload)
        svc.upload_dir.mkdir(parents=True, exist_ok=True)
        assert svc.pool is not None
        _, tmp, digest = _with_upload(svc, upload, name, svc.upload_dir,  # decoded safely first
                                      lambda tmp: svc.pool.decode(tmp, svc.max_side, source=name))
        try:
            with open(tmp, "rb") as fh:
                fmt = sniff_format(fh.read(16))
            final = svc.upload_dir / f"{digest}{_EXT.get(fmt or '', '.img')}"
            if final.exists():
                os.unlink(tmp)
            else:
                os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        writer = svc.writer
        assert writer is not None
        report = writer.add([str(final)], workers=1)
        if report.skipped:
            reason = next(iter(report.skipped.values()))
            raise ApiError("bad_image", f"{name}: not added ({reason})")
        id_ = writer.id_of(str(final))
        if report.added:
            writer.set_metadata(id_, {"uploaded_as": name, "uploaded": time.time()})
        entry = writer.entry(id_)
        return (201 if report.added else 200), {**_entry_json(_Links(svc, request), request, entry, full=True),
                                                "added": bool(report.added)}

    @app.delete("/api/images/{id}", tags=["write"], summary="Remove an image from the index")
    def delete_image(request: Request, id: int = PathParam(..., ge=0)) -> dict:
        """Needs `Authorization: Bearer TOKEN`. Marks the entry deleted (the file stays, except an
        uploaded file in the server's upload folder, which is deleted too)."""
        _check_token(svc, request)
        writer = svc.writer
        assert writer is not None
        e = live_entry(writer, id)
        writer.remove(id)
        if e.is_file and Path(e.path).parent.resolve() == svc.upload_dir.resolve():
            with contextlib.suppress(OSError):
                os.unlink(e.path)
        return {"removed": id, "name": svc.name(e.path)}

    return app
