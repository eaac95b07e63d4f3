"""Index shards on a Dask cluster: build them in parallel, search them as one index.

Needs the ``dask`` extra (``pip install fastimg[dask]``); ``import fastimg``
does not import Dask, this module imports it only when a ``client`` is given.
The scaling plan and the measured figures are in ``docs/scaling.md`` and
``bench/distributed.md``.

**Layout.** A sharded index is a directory ``root`` holding ``N`` ordinary
fastimg indexes ``root/shard-000`` ... ``root/shard-{N-1}`` (each a
:class:`fastimg.Index`, crash-safe and openable on its own) and the manifest
:data:`MANIFEST` (JSON, replaced atomically): format name and version, the
shard names, the descriptor spec, dimension and metric shared by every shard,
the partition rule and the counts of the last build.  Image paths are stored by
each shard relative to the folder containing ``root`` (as :class:`fastimg.Index`
does with its own folder), so the tree can be moved together with its index.

**Partition** (:func:`shard_of`): an image belongs to shard
``blake2b-64(key) mod N``, where ``key`` is its path relative to the folder
containing ``root`` (``/``-separated) when it lies under it, else its absolute
path (for :func:`add_vectors`: its name).  The path, not the content: a re-run
then only *stats* every file, as :meth:`fastimg.Index.add` does (the owner of a
file is known without reading it), and a shard sees each file at the same
place every time, so ``Index.add``'s size/mtime check skips unchanged files.  A
content hash would keep a moved file in its shard (where ``Index.add``
recognises a move), but every re-run would then have to read every byte of the
collection to learn where each file belongs (or keep a second, global table of
path -> shard).  Moves are rare; the price here is that a file moved to a path
of another shard is described again there (a move that stays in its shard
reuses the stored vector, see below).

**Build** (:func:`build_shards`): the client scans the folders (the rules of
``Index.add``), splits each shard's files into tasks of ``batch_size`` files,
and runs them on the cluster with at most one task per shard in flight (one
writer per shard: its lock).  A task opens its shard for writing on the worker
(the shards must be on a file system every worker sees) and calls
``Index.add(files)``, which skips unchanged files, re-describes modified ones,
copies the vector of a file whose content is already in the shard, and commits
the batch.  Then one last task per shard marks deleted the files that vanished
from the re-indexed folders (and rows that another shard now owns), and builds
or updates the HNSW graph when asked.  Vectors never travel: each worker writes
the shard it describes for (measured against sending them back to one writer in
``bench/distributed.md``).  A worker that dies loses its task's uncommitted
batch only; Dask re-runs the task on another worker (``Index.add`` is
idempotent: committed files are skipped), and if the build fails all the same,
running it again completes it.

**Search** (:class:`ShardedIndex`): the shards are opened read-only by *hosts*,
one per Dask worker (a Dask actor that keeps its shards open, memory-mapped,
between queries), or by one in-process host when no client is given (the
shards searched by threads).  A query is turned into a vector once (a path by
the host of its shard, which holds its stored vector; bytes and arrays on the
client), sent once to each host, each shard returns its top-``k`` (plus the one
row that may be the query itself), and the client merges: by score in the
metric's direction, then by lower global id.  A host whose worker dies is
replaced (its shards reopened on another worker) and the call retried; a shard
that cannot be searched raises :class:`ShardUnavailableError` naming it, unless
``allow_partial=True``, where the answer says which shards are missing.

**Global ids**: ``global_id = local_id * N + shard`` (``N`` shards; the local id
is the row id in the shard, see :class:`fastimg.Index`): ``shard = gid % N``,
``local = gid // N``.  Stable like the shard's ids (until that shard is
compacted).  Ties in score are broken by the lower global id (a single index
breaks them by its own ids, so tied hits may be ordered differently).
"""
from __future__ import annotations

from fastimg.distributed.build import ShardReport, add_vectors, build_shards
from fastimg.distributed.hosts import connect
from fastimg.distributed.layout import (
    FORMAT_VERSION,
    MANIFEST,
    DaskMissingError,
    ShardBuildError,
    ShardUnavailableError,
    is_sharded,
    shard_name,
    shard_of,
)
from fastimg.distributed.sharded import BatchResult, ShardedHits, ShardedIndex

__all__ = [
    "MANIFEST", "FORMAT_VERSION", "ShardedIndex", "ShardedHits", "BatchResult", "ShardReport",
    "ShardUnavailableError", "ShardBuildError", "DaskMissingError", "build_shards", "add_vectors", "shard_of",
    "is_sharded", "shard_name", "connect",
]
