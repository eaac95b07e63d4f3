"""How ``fastimg serve`` runs the application: :func:`freeze_heap` once it is made, and
with ``--workers N`` the app made in each uvicorn worker process from the environment
(:func:`app_from_env`; each process opens its own read-only handle and decoder processes)."""
from __future__ import annotations

import os
from dataclasses import asdict

from fastapi import FastAPI

from fastimg.serve.app import Settings, create_app

__all__ = ["ENV_SETTINGS", "settings_to_env", "freeze_heap", "app_from_env"]


ENV_SETTINGS = "FASTIMG_SERVE_SETTINGS"


def settings_to_env(index_path: str, settings: Settings) -> str:
    """The JSON that :func:`app_from_env` reads (``fastimg serve --workers N``, which
    has no token: writes need one server process)."""
    import json

    return json.dumps({"index": os.path.abspath(index_path), "settings": asdict(settings)})


def freeze_heap() -> None:
    """Take every object alive now out of the garbage collector's full collections
    (:func:`gc.freeze`), once the application is made (``fastimg serve`` calls it in each
    server process; an application embedding :func:`create_app` may do the same).

    The server process holds ~150,000 long-lived container objects once started (the
    modules of NumPy, Numba, FastAPI ..., the index handles), which every full collection
    walked: 50-150 ms per full collection on the loaded 2-core machine (``gc.callbacks``
    timings in bench/serve_load.py's open loop), a pause of every request thread and of the
    event loop.  Frozen, a full collection during that load took 2-3 ms.  Objects made
    later are collected as usual.
    """
    import gc

    gc.collect()
    gc.freeze()


def app_from_env() -> FastAPI:
    """``create_app`` from ``$FASTIMG_SERVE_SETTINGS`` (uvicorn's factory in each worker process)."""
    import json

    doc = json.loads(os.environ[ENV_SETTINGS])
    fields = doc["settings"]
    fields["allow_origins"] = tuple(fields.get("allow_origins") or ())
    app = create_app(doc["index"], Settings(**fields))
    freeze_heap()
    return app
