"""``fastimg serve``: an HTTP API and a web page for searching an index by image.

:func:`create_app` returns a FastAPI application (an ASGI app: run it with
uvicorn, or mount it inside another application); ``fastimg serve`` runs it with
uvicorn.  The server is one more caller of the library: it opens the index with
:meth:`fastimg.Index.open` (read-only unless writes are enabled), searches with
:meth:`~fastimg.Index.search` (an upload's descriptor vector) and
:meth:`~fastimg.Index.similar` (an id), and decodes and describes every
untrusted image in worker processes with memory and time limits
(:mod:`fastimg.serve.sandbox`).

Modules: :mod:`fastimg.serve.app` (the application: routes, errors, settings),
:mod:`fastimg.serve.running` (how `fastimg serve` runs it: `gc.freeze`, `--workers`),
:mod:`fastimg.serve.sandbox` (the decoder processes), :mod:`fastimg.serve.metrics`
(the Prometheus text of ``/metrics``), ``static/`` (the page).

Needs the ``serve`` extra (``pip install 'fastimg[serve]'``: FastAPI, uvicorn,
python-multipart); ``import fastimg`` and the other commands never import them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["create_app", "Settings"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fastimg.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'fastimg.serve' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from fastimg.serve.app import Settings, create_app
