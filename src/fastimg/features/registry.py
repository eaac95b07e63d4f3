"""Descriptor registry: image -> feature vector.

A *descriptor* turns a BGR ``uint8`` image into a fixed-length ``float32``
vector.  Descriptors are looked up by name (plus parameters) in a registry:

>>> import fastimg
>>> v = fastimg.describe("photo.jpg")                            # doctest: +SKIP
>>> m, errors = fastimg.describe_many(paths, "spatial-hsv", workers=2)  # doctest: +SKIP

Built-in descriptors (``fastimg.descriptors()`` lists them with their
dimension and default metric; defaults were chosen from retrieval quality
measured on Corel-1k, see ``bench/descriptors.md``):

``hsv72``
    The original design's 72-bin HSV histogram (8 hue x 3 saturation x 3 value).
``rgbN`` (``rgb64``, ``rgb512``, ``rgb4096`` ...)
    Uniform RGB quantisation, ``N = L**3`` bins for ``L`` levels per channel.
``hsv``
    HSV histogram with configurable ``bins=(h, s, v)`` through :func:`cv2.calcHist`.
``spatial-<base>`` (e.g. ``spatial-hsv``)
    The base descriptor over a grid of regions plus a centre region, concatenated.
``correlogram``
    Auto colour correlogram (LIRE's ``AutoColorCorrelogram`` idea).
``lbp``
    Histogram of uniform local binary patterns (texture).
``ehd``
    MPEG-7-style edge histogram (80 bins).
``cedd``
    CEDD-style colour and edge directivity descriptor (144 bins).
``combo`` / ``classic`` / ``classic-fast``
    Weighted concatenation of other descriptors; ``classic`` is the best
    combination measured on Corel-1k (spatial-hsv72 + correlogram + lbp,
    mAP 0.64 with L1), ``classic-fast`` the same without the correlogram.

Other modules add descriptors with :func:`register`.  The built-ins live in
:mod:`fastimg.features.classic`, which registers them when the registry is
first used; names starting with ``cnn``, ``efficientnet`` or ``mobilenet`` load
:mod:`fastimg.features.deep` on first use (``efficientnet-lite0-spoc`` is the
recommended deep descriptor; see that module).  :class:`~fastimg.features.base.Descriptor` itself is defined in
:mod:`fastimg.features.base` (re-exported here).

Images are shrunk to a working size before description (``max_side``, a
parameter every descriptor accepts; default 512 pixels on the longer side,
``None`` for full resolution): histograms are normalised, so this costs little
quality and makes large photos cheap (reduced JPEG decoding, see
:mod:`fastimg.image`).
"""
from __future__ import annotations

import copy
import importlib
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np

from fastimg.errors import ArgumentError, DescriptorError, ImageError
from fastimg.features.base import WORK_SIDE, Descriptor, jsonable
from fastimg.image import ImageSource, load_image

__all__ = [
    "Descriptor",
    "descriptors",
    "get_descriptor",
    "descriptor_from_spec",
    "describe",
    "describe_many",
    "register",
    "WORK_SIDE",
]

logger = logging.getLogger(__name__)

_MISSING = object()


# ----------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------
Factory = Callable[..., Descriptor]

_lock = threading.RLock()
_EXACT: Dict[str, Tuple[Factory, str]] = {}
_PREFIX: Dict[str, Tuple[Factory, str]] = {}
_CACHE: Dict[str, Descriptor] = {}
#: Modules that register descriptors when imported (they import this module, never the
#: reverse): the built-ins, loaded on the registry's first use ...
_BUILTIN_MODULES = ("fastimg.features.classic",)
#: ... and plug-ins loaded when a name with one of these prefixes is asked for.
_LAZY_PREFIXES = {"cnn": "fastimg.features.deep", "efficientnet": "fastimg.features.deep",
                  "mobilenet": "fastimg.features.deep"}
_builtins = 0  # 0: not loaded, 1: being loaded (by the thread holding _lock), 2: loaded


def _load_builtins() -> None:
    """Import :data:`_BUILTIN_MODULES` once (they call :func:`register`)."""
    global _builtins
    if _builtins == 2:
        return
    with _lock:
        if _builtins:  # loaded, or this thread is loading them (a module's register() call)
            return
        _builtins = 1
        try:
            for module in _BUILTIN_MODULES:
                importlib.import_module(module)
        except BaseException:
            _builtins = 0
            raise
        _builtins = 2


def register(name_or_prefix: str, factory: Factory, *, prefix: Optional[bool] = None,
             doc: Optional[str] = None, replace: bool = False) -> None:
    """Add a descriptor (or a family of descriptors) to the registry.

    Parameters
    ----------
    name_or_prefix : str
        An exact name (``"hsv72"``) or, for a family, a prefix written with a
        trailing ``*`` (``"cnn-*"``); ``prefix=True`` marks a prefix without the star.
    factory : callable
        For an exact name: ``factory(**params) -> Descriptor``.  For a prefix:
        ``factory(name, **params) -> Descriptor`` receiving the full requested
        name (``"cnn-resnet50"``).  It should raise :class:`DescriptorError` for
        bad parameters (a ``TypeError`` from unexpected keywords is converted).
        The returned descriptor's ``name`` and ``params`` must rebuild it:
        ``get_descriptor(d.name, **d.params)``.
    prefix : bool, optional
        Force prefix (True) or exact (False) interpretation.
    doc : str, optional
        One-line description (default: the first line of the factory's docstring).
    replace : bool, optional
        Allow replacing an existing registration (default: error).

    Raises
    ------
    DescriptorError
        If the name is empty or already registered (and ``replace`` is False).
    """
    if not isinstance(name_or_prefix, str) or not name_or_prefix.strip("*"):
        raise DescriptorError(f"register: name must be a non-empty string; got {name_or_prefix!r}")
    if not callable(factory):
        raise DescriptorError(f"register: factory for {name_or_prefix!r} is not callable")
    key = name_or_prefix.lower()
    is_prefix = key.endswith("*") if prefix is None else bool(prefix)
    key = key.rstrip("*")
    if doc is None:
        doc = (factory.__doc__ or "").strip().splitlines()[0] if factory.__doc__ else ""
    _load_builtins()  # a name taken by a built-in is refused whatever the import order
    with _lock:
        table = _PREFIX if is_prefix else _EXACT
        if key in table and not replace:
            raise DescriptorError(f"descriptor {'prefix ' if is_prefix else ''}{key!r} is already registered")
        table[key] = (factory, doc)
        _CACHE.clear()


def _known_names() -> List[str]:
    # families registered on first use (the deep extra) are named by their prefix until then
    lazy = [f"{pre}-*" for pre in _LAZY_PREFIXES if not any(p.startswith(pre) for p in _PREFIX)]
    return sorted(_EXACT) + sorted([p + "*" for p in _PREFIX] + lazy)


def _resolve(name: str) -> Tuple[Factory, bool]:
    _load_builtins()
    key = name.lower()
    if key in _EXACT:
        return _EXACT[key][0], False
    matches = [p for p in _PREFIX if key.startswith(p)]
    if matches:
        return _PREFIX[max(matches, key=len)][0], True
    raise KeyError(key)


def _load_lazy(key: str) -> None:
    for pre, module in _LAZY_PREFIXES.items():
        if key.startswith(pre):
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name == module:
                    raise DescriptorError(
                        f"descriptor {key!r} needs {module}, which is not available in this fastimg installation"
                    ) from None
                raise DescriptorError(f"descriptor {key!r}: importing {module} failed: {exc}") from exc
            except ImportError as exc:
                raise DescriptorError(f"descriptor {key!r}: importing {module} failed: {exc}") from exc
            return


def get_descriptor(name: Union[str, Descriptor, Mapping[str, Any]] = "hsv72", **params: Any) -> Descriptor:
    """Look up a descriptor by name and parameters.

    Parameters
    ----------
    name : str, Descriptor or dict
        A registered name (case-insensitive), a :class:`Descriptor` (returned
        as is) or a spec dict (see :func:`descriptor_from_spec`).
    **params
        Descriptor parameters; every descriptor also accepts ``max_side``
        (working size, default :data:`WORK_SIDE`; ``None`` = full resolution).

    Returns
    -------
    Descriptor

    Raises
    ------
    DescriptorError
        Unknown name (the message lists the known ones) or invalid parameters.
    """
    if isinstance(name, Descriptor):
        if params:
            raise DescriptorError(f"parameters {sorted(params)} given with a Descriptor instance {name!r}")
        return name
    if isinstance(name, Mapping):
        if params:
            raise DescriptorError("parameters given together with a descriptor spec")
        return descriptor_from_spec(name)
    if not isinstance(name, str) or not name:
        raise DescriptorError(f"descriptor name must be a non-empty string; got {name!r}")
    max_side = params.pop("max_side", _MISSING)
    if max_side is not _MISSING and max_side is not None:
        if isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or max_side < 8:
            raise DescriptorError(f"max_side must be an int >= 8 or None; got {max_side!r}")
        max_side = int(max_side)
    key = name.lower()
    cache_key = json.dumps([key, jsonable(params), None if max_side is _MISSING else max_side,
                            max_side is _MISSING], sort_keys=True)
    with _lock:
        cached = _CACHE.get(cache_key)
    if cached is not None:
        return cached
    try:
        factory, is_prefix = _resolve(key)
    except KeyError:
        _load_lazy(key)
        try:
            factory, is_prefix = _resolve(key)
        except KeyError:
            raise DescriptorError(
                f"unknown descriptor {name!r}; known: {', '.join(_known_names())}"
            ) from None
    try:
        desc = factory(key, **params) if is_prefix else factory(**params)
    except DescriptorError:
        raise
    except TypeError as exc:
        raise DescriptorError(f"descriptor {name!r}: invalid parameters {sorted(params)}: {exc}") from exc
    if not isinstance(desc, Descriptor):
        raise DescriptorError(f"factory for {name!r} returned {type(desc).__name__}, not a Descriptor")
    if max_side is not _MISSING and max_side != desc.max_side:
        desc = copy.copy(desc)  # the factory may share instances: never mutate its object
        desc.max_side = max_side
    with _lock:
        _CACHE[cache_key] = desc
    return desc


def descriptor_from_spec(spec: Mapping[str, Any]) -> Descriptor:
    """Rebuild a descriptor from :meth:`Descriptor.spec` output.

    Parameters
    ----------
    spec : dict
        Must hold ``name``; ``params``, ``max_side``, ``dim`` and ``version`` are
        used when present.

    Returns
    -------
    Descriptor

    Raises
    ------
    DescriptorError
        If the spec is malformed, or the descriptor this fastimg builds has a
        different ``dim`` or ``version`` (vectors would not be comparable).
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise DescriptorError(f"descriptor spec must be a dict with a 'name' string; got {spec!r}")
    params = dict(spec.get("params") or {})
    if "max_side" in spec:
        params["max_side"] = spec["max_side"]
    desc = get_descriptor(spec["name"], **params)
    for field in ("dim", "version"):
        if field in spec and spec[field] != getattr(desc, field):
            raise DescriptorError(
                f"descriptor {spec['name']!r}: spec has {field}={spec[field]!r} but this fastimg builds "
                f"{field}={getattr(desc, field)!r}; vectors are not comparable (rebuild the index)"
            )
    return desc


def descriptors() -> List[Dict[str, Any]]:
    """List the registered descriptors with their default parameters.

    Returns
    -------
    list of dict
        One dict per name: ``name``, ``dim``, ``default_metric``, ``version``,
        ``params`` and ``doc``.  Families registered by prefix appear with
        their documented representative names; a family without examples
        appears as ``prefix*``, and a name that needs parameters (``combo``)
        with ``dim`` None.  A representative that cannot be built here (a
        model not installed) is listed with ``dim`` None and a ``doc`` that
        starts with ``unavailable:`` and says what to install.
    """
    _load_builtins()
    for pre in _LAZY_PREFIXES:
        try:
            _load_lazy(pre)
        except DescriptorError:
            pass
    rows = []
    with _lock:
        exact = dict(_EXACT)
        prefixes = dict(_PREFIX)
    for name, (_, doc) in sorted(exact.items()):
        try:
            rows.append(_row(get_descriptor(name), doc))
        except DescriptorError:  # needs parameters (e.g. combo)
            rows.append({"name": name, "dim": None, "default_metric": None, "version": None,
                         "params": {}, "doc": doc})
    for pre, (factory, doc) in sorted(prefixes.items()):
        examples = getattr(factory, "examples", None) or []
        if not examples:
            rows.append({"name": pre + "*", "dim": None, "default_metric": None, "version": None,
                         "params": {}, "doc": doc})
        for ex in examples:
            try:
                rows.append(_row(get_descriptor(ex), doc))
            except DescriptorError as exc:  # e.g. a model not installed: the row says what to install
                rows.append({"name": ex, "dim": None, "default_metric": None, "version": None,
                             "params": {}, "doc": f"unavailable: {exc}"})
    return rows


def _row(d: Descriptor, doc: str) -> Dict[str, Any]:
    return {"name": d.name, "dim": d.dim, "default_metric": d.default_metric, "version": d.version,
            "params": dict(d.params), "doc": d.doc or doc}


# ----------------------------------------------------------------------------
# describe / describe_many
# ----------------------------------------------------------------------------
def describe(image: ImageSource, descriptor: Union[str, Descriptor, Mapping[str, Any]] = "hsv72",
             **params: Any) -> np.ndarray:
    """Describe one image.

    Parameters
    ----------
    image : str, os.PathLike, bytes or numpy.ndarray
        Anything :func:`fastimg.image.load_image` accepts.
    descriptor : str, Descriptor or dict
        Descriptor name (default ``"hsv72"``), instance or spec.
    **params
        Descriptor parameters (see :func:`get_descriptor`).

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(dim,)``.

    Raises
    ------
    ImageError
        The image cannot be loaded.
    DescriptorError
        Unknown descriptor or bad parameters.

    Notes
    -----
    One image is described by the descriptor's single-image path when it has
    one (``hsv72``, ``rgbN``, ``lbp``, and ``spatial-*`` / ``combo`` /
    ``classic-fast`` built on them): NumPy code that returns exactly the
    vector of the Numba kernel used by :func:`describe_many`, without
    numba's start-up (about a second to import it and load its cached
    kernels; a query of a new image no longer pays it).
    """
    d = get_descriptor(descriptor, **params)
    img = load_image(image, max_side=d.max_side)
    # one image: the start-up-free path (no Numba import / kernel loading), same values
    return d.compute(img, single=True)


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _source_name(src: Any) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src) if isinstance(os.fspath(src), str) else os.fsdecode(src)
    if isinstance(src, np.ndarray):
        return "<array>"
    if isinstance(src, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return f"<{type(src).__name__}>"


def _wrap_error(src: Any, exc: BaseException) -> ImageError:
    if isinstance(exc, ImageError):
        return exc
    logger.warning("describing %s failed unexpectedly", _source_name(src), exc_info=exc)
    err = ImageError(_source_name(src), "failed", f"{type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def describe_many(
    images: Iterable[ImageSource],
    descriptor: Union[str, Descriptor, Mapping[str, Any]] = "hsv72",
    *,
    workers: Optional[int] = None,
    progress: Union[bool, Callable[[int, int], Any]] = False,
    **params: Any,
) -> Tuple[np.ndarray, Dict[int, ImageError]]:
    """Describe many images in parallel, collecting per-image errors.

    Images are decoded and described on a pool of threads (OpenCV decoding and
    the Numba kernels release the GIL, so threads scale over cores).  A
    descriptor with a batch function (a neural network, ``compute_batch``) gets
    the images in batches of its ``batch_size``, the next batch being decoded
    while one is described.  A file that cannot be read never stops the run:
    its row is NaN and its error is returned.

    Parameters
    ----------
    images : iterable of str, os.PathLike, bytes or numpy.ndarray
        The images (materialised into a list first).
    descriptor : str, Descriptor or dict
        Descriptor name (default ``"hsv72"``), instance or spec.
    workers : int, optional
        Number of threads (default: the CPUs available to this process; 1 runs
        in the calling thread).
    progress : bool or callable, optional
        ``True`` shows a tqdm progress bar; a callable is called as
        ``progress(done, total)`` from the calling thread after each chunk.
    **params
        Descriptor parameters (see :func:`get_descriptor`).

    Returns
    -------
    matrix : numpy.ndarray
        ``float32`` array of shape ``(len(images), dim)``; rows of failed images are NaN.
    errors : dict of int to ImageError
        Position in ``images`` -> the error for that image.
    """
    d = get_descriptor(descriptor, **params)
    items = list(images)
    n = len(items)
    out = np.full((n, d.dim), np.nan, dtype=np.float32)
    errors: Dict[int, ImageError] = {}
    if workers is None:
        workers = _default_workers()
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ArgumentError(f"workers must be a positive int or None; got {workers!r}")
    if n == 0:
        return out, errors

    bar = None
    callback: Optional[Callable[[int, int], Any]] = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, unit="img", desc=f"describe {d.name}")
    elif callable(progress):
        callback = progress
    elif progress not in (False, None):
        raise ArgumentError(f"progress must be a bool or a callable(done, total); got {progress!r}")

    batched = d.compute_batch is not None
    if not batched and workers > 1 and n > 1:
        # Compile / warm the kernels once in this thread so workers do not queue on numba's lock.
        try:
            d.compute(np.zeros((8, 8, 3), dtype=np.uint8))
        except Exception:  # noqa: BLE001 - the per-image path reports real failures
            pass

    chunk = d.batch_size if batched else max(1, min(32, n // (workers * 8) or 1))
    starts = list(range(0, n, chunk))

    def load(i: int) -> Optional[np.ndarray]:
        try:
            return load_image(items[i], max_side=d.max_side)
        except Exception as exc:  # noqa: BLE001 - collected per file
            errors[i] = _wrap_error(items[i], exc)
            return None

    def one(i: int) -> None:
        img = load(i)
        if img is None:
            return
        try:
            out[i] = d.compute(img)
        except Exception as exc:  # noqa: BLE001
            errors[i] = _wrap_error(items[i], exc)

    def run_chunk(start: int) -> int:
        stop = min(start + chunk, n)
        for i in range(start, stop):
            one(i)
        return stop - start

    def run_batch(start: int, imgs: List[Optional[np.ndarray]]) -> int:
        idx = list(range(start, start + len(imgs)))
        ok = [(i, im) for i, im in zip(idx, imgs) if im is not None]
        if ok:
            try:
                vecs = np.asarray(d.compute_batch([im for _, im in ok]), dtype=np.float32)  # type: ignore[misc]
                if vecs.shape != (len(ok), d.dim):
                    raise DescriptorError(f"compute_batch returned shape {vecs.shape}; expected {(len(ok), d.dim)}")
                out[[i for i, _ in ok]] = vecs
            except Exception:  # noqa: BLE001 - fall back to one by one to find the culprit
                for i, im in ok:
                    try:
                        out[i] = d.compute(im)
                    except Exception as exc:  # noqa: BLE001
                        errors[i] = _wrap_error(items[i], exc)
        return len(imgs)

    done = 0

    def report(k: int) -> None:
        nonlocal done
        done += k
        if bar is not None:
            bar.update(k)
        if callback is not None:
            callback(done, n)

    try:
        if workers == 1 or n == 1:
            for s in starts:
                report(run_batch(s, [load(i) for i in range(s, min(s + chunk, n))]) if batched else run_chunk(s))
        elif batched:
            # the next batch is decoded while this one is described (a network on its own threads)
            with ThreadPoolExecutor(max_workers=min(workers, chunk)) as pool:
                ahead = [pool.submit(load, i) for i in range(0, min(chunk, n))]
                for k, s in enumerate(starts):
                    imgs = [f.result() for f in ahead]
                    nxt = starts[k + 1] if k + 1 < len(starts) else n
                    ahead = [pool.submit(load, i) for i in range(nxt, min(nxt + chunk, n))]
                    report(run_batch(s, imgs))
        else:
            with ThreadPoolExecutor(max_workers=min(workers, len(starts))) as pool:
                futures = [pool.submit(run_chunk, s) for s in starts]
                for f in as_completed(futures):
                    report(f.result())
    finally:
        if bar is not None:
            bar.close()
    return out, dict(sorted(errors.items()))

