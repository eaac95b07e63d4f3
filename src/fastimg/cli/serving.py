"""``fastimg serve``: the HTTP API and the web page (the work: :mod:`fastimg.serve`).

FastAPI and uvicorn (the ``serve`` extra) are imported inside :func:`cmd_serve`
only, so ``fastimg --help`` and the other commands never load them.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from fastimg.cli.common import INDEX_RULE, PROG, CommandError, UsageError, add_command, index_path, positive_int

__all__ = ["add_serve_parser", "cmd_serve"]


def add_serve_parser(sub: Any, ix: argparse.ArgumentParser) -> None:
    """``fastimg serve``."""
    p = add_command(sub, "serve", "serve the index over HTTP: a search page and a JSON API",
                    "Serve the index: a page to search it by dropping a photo (http://HOST:PORT/), a JSON\n"
                    "API (/api/search, /api/similar/ID, /api/images ...; documented at /docs), /healthz\n"
                    "and /metrics (Prometheus). Read-only unless --token-file enables the write API\n"
                    "(POST/DELETE /api/images with 'Authorization: Bearer TOKEN'). Needs the serve\n"
                    "extra: pip install 'fastimg[serve]'. Ctrl-C stops it.",
                    f"""\
examples:
  fastimg serve                                   http://127.0.0.1:8000/
  fastimg serve -i photos.fastimg --port 8080 --workers 2
  fastimg serve --token-file ~/.config/fastimg-token      # writes allowed with that token
  curl -F image=@photo.jpg -F k=5 http://127.0.0.1:8000/api/search

{INDEX_RULE}
Safety: binds 127.0.0.1 unless --host says otherwise (0.0.0.0: every interface);
uploads are size-limited and decoded in worker processes with memory and time limits;
files are served by id only (thumbnails); CORS is off unless --allow-origin.""", [ix])
    p.add_argument("--host", default="127.0.0.1", metavar="HOST",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, metavar="PORT", help="TCP port (default 8000; 0: any free one)")
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="server processes, each with its own read-only handle (default 1; writes need 1)")
    p.add_argument("--token-file", metavar="FILE", default=None,
                   help="file holding the bearer token of the write API (without it writes are off)")
    p.add_argument("--allow-origin", action="append", metavar="ORIGIN", default=None,
                   help="allow cross-origin requests from ORIGIN (repeatable; '*' for any); default: CORS off")
    p.add_argument("--max-upload-mb", type=positive_int, default=32, metavar="MB",
                   help="largest accepted upload (default 32; larger: 413)")
    p.add_argument("--decode-workers", type=positive_int, default=None, metavar="N",
                   help="decoder processes per server process: they decode and describe uploads and make "
                        "thumbnails (default: 2, or 1 on one core)")
    p.set_defaults(func=cmd_serve)


def _token(path: str) -> str:
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as fh:
            token = fh.read().strip()
    except OSError as exc:
        raise CommandError(f"--token-file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CommandError(f"--token-file {path}: not a text file") from None
    if not token or any(c.isspace() for c in token):
        raise CommandError(f"--token-file {path}: expected one token (no spaces) in the file; found "
                           + ("nothing" if not token else "whitespace inside it"))
    return token


def cmd_serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535; got {args.port}")
    token = _token(args.token_file) if args.token_file else None
    if token is not None and args.workers > 1:
        raise UsageError("--token-file needs --workers 1 (an index has one writer: the write API runs in one "
                         "server process)")
    try:
        import uvicorn

        from fastimg.serve.app import Settings, create_app
        from fastimg.serve.running import ENV_SETTINGS, freeze_heap, settings_to_env
    except ModuleNotFoundError as exc:
        raise CommandError(f"`{PROG} serve` needs the serve extra ({exc.name} is missing): "
                           "pip install 'fastimg[serve]'") from None
    path = index_path(args)
    _check_bindable(args.host, args.port)  # a clear message rather than uvicorn's log and exit code 3
    settings = Settings(token=token, allow_origins=tuple(args.allow_origin or ()),
                        max_upload_bytes=args.max_upload_mb << 20, decode_workers=args.decode_workers)
    # the index is opened (and its errors reported) before anything binds
    app = create_app(path, settings)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.stderr.write(f"{PROG} serve: listening on {args.host}, reachable from other machines\n")
    if args.workers == 1:
        freeze_heap()
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
        return 0
    app.state.fastimg.close()  # each worker process opens its own handle
    os.environ[ENV_SETTINGS] = settings_to_env(path, settings)
    uvicorn.run("fastimg.serve.running:app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level="info")
    return 0


def _check_bindable(host: str, port: int) -> None:
    """A :class:`CommandError` when ``host:port`` cannot be listened on (in use, no such
    address, or a privileged port); uvicorn binds the same way just after."""
    import errno
    import socket

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CommandError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CommandError(f"{host}:{port} is already in use (another server?): choose another --port, "
                                   "or --port 0 for any free one") from None
            if exc.errno == errno.EACCES:
                raise CommandError(f"{host}:{port}: permission denied (ports below 1024 need privileges): "
                                   "choose --port 1024 or above") from None
            raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror}") from None

