"""The on-disk layout of a sharded index: shard names, the partition rule, the
manifest (read, written, created with the empty shards).  See the package
docstring (:mod:`fastimg.distributed`) for the layout and the partition."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from fastimg.errors import ArgumentError, FastimgError, IndexFormatError, IndexNotFoundError

__all__ = ["MANIFEST", "FORMAT_NAME", "FORMAT_VERSION", "PARTITION", "BUILD_BATCH", "ShardUnavailableError",
           "DaskMissingError", "ShardBuildError", "shard_name", "shard_of", "is_sharded", "image_folder", "file_key",
           "read_manifest", "write_manifest", "new_manifest", "open_or_create", "same_descriptor", "current_spec"]

PathLike = Union[str, "os.PathLike[str]"]

#: The manifest of a sharded index, in its root directory.
MANIFEST = "fastimg-shards.json"
FORMAT_NAME = "fastimg-shards"
#: Version of the sharded layout (the shards have their own format version).
FORMAT_VERSION = 1
PARTITION = "blake2b-64(path relative to the root's parent, or absolute; or the name) mod shards"
#: Files per build task (one ``Index.add`` call, one commit).
BUILD_BATCH = 256


class ShardUnavailableError(FastimgError, RuntimeError):
    """A shard could not be searched (its worker died and reopening it failed, or
    its files are gone).  ``shards`` names them; ``causes`` maps each to its error."""

    def __init__(self, message: str, shards: Sequence[str] = (), causes: Optional[Mapping[str, str]] = None):
        super().__init__(message)
        self.shards = tuple(shards)
        self.causes = dict(causes or {})


class DaskMissingError(FastimgError, ImportError):
    """A cluster was asked for but Dask (the ``dask`` extra) is not installed."""


class ShardBuildError(FastimgError, RuntimeError):
    """A build task failed (after Dask's own retries).  Committed batches are kept:
    running :func:`build_shards` again completes the shards."""


# --------------------------------------------------------------------------- #
# layout
# --------------------------------------------------------------------------- #

def shard_name(i: int) -> str:
    """The directory name of shard ``i`` (``shard-007``)."""
    return f"shard-{int(i):03d}"


def shard_of(key: str, shards: int) -> int:
    """The shard of ``key`` (see the module docstring): ``blake2b-64(key) mod shards``."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % int(shards)


def is_sharded(path: PathLike) -> bool:
    """True if ``path`` is the root of a sharded index (holds :data:`MANIFEST`)."""
    return os.path.isfile(os.path.join(os.fspath(path), MANIFEST))


def image_folder(root: Path) -> str:
    """The folder image paths are stored relative to: the one containing ``root``."""
    return os.path.dirname(os.path.abspath(root))


def file_key(path: str, image_root: str) -> str:
    """The partition key of ``path`` (see the package docstring): relative to
    ``image_root`` (``/``-separated) when it lies under it, else absolute."""
    ab = os.path.abspath(path)
    try:
        if os.path.commonpath([ab, image_root]) == image_root:
            return os.path.relpath(ab, image_root).replace(os.sep, "/")
    except ValueError:  # pragma: no cover - different drives
        pass
    return ab


def read_manifest(root: Path) -> dict:
    """The manifest of the sharded index at ``root``, validated (IndexNotFoundError,
    IndexFormatError naming the file and what is wrong)."""
    path = root / MANIFEST
    if not path.is_file():
        if (root / "manifest.json").is_file():
            raise IndexFormatError(f"{root}: a single fastimg index, not a sharded one (no {MANIFEST})")
        raise IndexNotFoundError(f"{root}: no sharded fastimg index here (no {MANIFEST}; build one with "
                                 "fastimg.distributed.build_shards or `fastimg index DIR --shards N`)")
    from fastimg._version import __version__
    from fastimg.index._files import load_manifest  # the index's manifest checks (format, version)

    man = load_manifest(path, format_name=FORMAT_NAME, max_version=FORMAT_VERSION, fastimg_version=__version__,
                        what="sharded fastimg index", version_name="sharded index format")
    shards = man.get("shards")
    if not isinstance(shards, list) or not shards or not all(isinstance(s, dict) and "name" in s for s in shards):
        raise IndexFormatError(f"{path}: 'shards' must be a non-empty list of {{'name': ...}}")
    for key in ("descriptor", "metric", "dim"):
        if key not in man:
            raise IndexFormatError(f"{path}: missing {key!r}")
    return man


def write_manifest(root: Path, man: dict) -> None:
    from fastimg.index._files import write_json_atomic  # the index's durable JSON write

    write_json_atomic(root / MANIFEST, man)


def same_descriptor(a: dict, b: dict) -> bool:
    """Whether two descriptor specs name the same descriptor and parameters, whatever their
    versions: a shard whose writer re-described its rows (a new descriptor version, see
    :class:`fastimg.index.descriptor.IndexDescriptor`) still belongs to its collection."""
    return {k: v for k, v in a.items() if k != "version"} == {k: v for k, v in b.items() if k != "version"}


def current_spec(spec: dict) -> dict:
    """The spec this fastimg describes with for the descriptor and parameters of ``spec``
    (its version may be newer); ``spec`` itself for custom vectors or a descriptor this
    fastimg cannot make."""
    if spec.get("name") == "custom":
        return spec
    from fastimg.errors import DescriptorError
    from fastimg.features.registry import descriptor_from_spec

    try:
        return dict(descriptor_from_spec({k: v for k, v in spec.items() if k != "version"}).spec())
    except DescriptorError:
        return spec


def new_manifest(n: int, spec: dict, metric: str, dim: int) -> dict:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "partition": PARTITION,
        "shards": [{"name": shard_name(i), "count": 0} for i in range(n)],
        "descriptor": spec,
        "dim": int(dim),
        "metric": metric,
        "count": 0,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "updated": None,
    }


def open_or_create(root: Path, shards: Optional[int], descriptor: Optional[str], metric: Optional[str],
                    dim: Optional[int] = None, descriptor_params: Optional[dict] = None) -> dict:
    """The manifest of ``root``, creating the root and its empty shards first when new.

    An existing root keeps its shard count, descriptor and metric: asking for
    others is an error (re-sharding means building a new root)."""
    from fastimg.index import Index

    if shards is not None and (isinstance(shards, bool) or not isinstance(shards, (int, np.integer))
                               or int(shards) < 1):
        raise ArgumentError(f"shards must be a positive integer; got {shards!r}")
    if (root / MANIFEST).is_file():
        man = read_manifest(root)
        have = len(man["shards"])
        if shards is not None and int(shards) != have:
            raise ArgumentError(f"{root}: the sharded index has {have} shards, not {shards} (re-sharding is not "
                             "supported: build a new root)")
        name = man["descriptor"].get("name")
        if descriptor is not None and descriptor != name:
            raise ArgumentError(f"{root}: the shards use descriptor {name!r}, not {descriptor!r}")
        if metric is not None:
            from fastimg.metrics import get_metric

            if get_metric(metric).name != man["metric"]:
                raise ArgumentError(f"{root}: the shards' default metric is {man['metric']!r}, not {metric!r}")
        for s in man["shards"]:  # a crash between writing the manifest and creating every shard
            if not (root / s["name"] / "manifest.json").is_file():
                Index.create(root / s["name"], man["descriptor"]["name"], man["metric"],
                             dim=man["dim"] if man["descriptor"]["name"] == "custom" else None,
                             root=image_folder(root), **man["descriptor"].get("params", {})).close()
        return man
    if shards is None:
        raise ArgumentError(f"{root}: a new sharded index needs the number of shards (shards=N)")
    if root.exists() and any(root.iterdir()):
        if (root / "manifest.json").is_file():
            raise FileExistsError(f"{root}: holds a single (unsharded) fastimg index; choose another root")
        raise FileExistsError(f"{root}: not empty and not a sharded fastimg index")
    root.mkdir(parents=True, exist_ok=True)
    first = None
    for i in range(int(shards)):
        idx = Index.create(root / shard_name(i), descriptor or "hsv72", metric, dim=dim, root=image_folder(root),
                           **(descriptor_params or {}))
        if first is None:
            first = idx.info()
        idx.close()
    assert first is not None
    man = new_manifest(int(shards), first["descriptor"], first["metric"], first["dim"])
    write_manifest(root, man)  # the sharded index exists from here on
    return man

