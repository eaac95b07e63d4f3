"""The embeddable index: create, open, add, search, remove, compact.

:class:`Index` is what applications and the CLI use.  Its files (one
directory) are described in :mod:`fastimg.index.store`; the behaviour:

* **Incremental add** (:meth:`Index.add`, :mod:`fastimg.index.ingest`): a file
  whose size and mtime are unchanged is skipped; a modified one is re-extracted
  (its old row is marked deleted in the same transaction that commits the new
  one); a new path whose content hash matches a file that vanished from the
  re-indexed folders is a *move*: its row is kept (same id and vector) and only
  the path changes; a new path whose content matches any other indexed row
  reuses that row's vector instead of decoding the image again; files that
  vanished from the re-indexed folders are marked deleted.  Paths (any name the
  OS can hold: ``str`` with surrogate escapes, stored as bytes) are stored
  relative to the index root when the file lies under it; the root is recorded
  as an absolute path by default (the folder containing the index directory:
  the index can be copied anywhere) or relative to the index (``root=``: the
  tree can be moved together with its index); :meth:`Index.relocate` rewrites
  them when the files move.  When the index's descriptor changed version, the
  first ``add`` describes the indexed files again.
* **Checking** (:meth:`Index.check`, :mod:`fastimg.index.check`): every file
  against the metadata and checksums; ``repair=True`` rebuilds caches, graph and
  whitening without touching committed rows.
* **Crash safety**: rows are committed in batches (vectors appended and fsynced,
  then one SQLite transaction); a process killed during ``add`` loses at most the
  batch in flight, and re-running ``add`` resumes.
* **Concurrency**: one writer (``mode="a"``) at a time per index, enforced by a
  lock file (a second writer gets :class:`~fastimg.errors.IndexLockedError`);
  any number of readers (``mode="r"``), each seeing the last committed state
  (checked with one SQLite query at every call, :mod:`fastimg.index.view`).  One
  ``Index`` object serves any number of threads for reads (searches, lookups)
  at once: there is no handle-wide lock on the read side (its state, scans and
  graph are immutable snapshots swapped atomically) and the scan releases the
  GIL; a writer handle's writing calls are serialised (one writing thread at a
  time) while its other threads keep reading.  There is no global state, so
  several indexes (or several handles on one index) can be open in one process.
* **Read-only handles never write** into the index directory (an index on a
  read-only disk works: :func:`fastimg.index._files.connect`): writers keep the
  caches searches map (:mod:`fastimg.index.caches`); a handle prepares what is
  not cached in memory (:mod:`fastimg.index.scan`).
* **Search** (:meth:`Index.search`, :mod:`fastimg.index.query` and
  :mod:`fastimg.index.searching`): the query is a path, encoded bytes, a BGR
  array, or a vector of the index dimension.  The exact mode scans the
  memory-mapped matrix with :class:`fastimg.search.ExactSearcher`; the ``ann``
  mode asks the HNSW graph (:mod:`fastimg.ann`, built by :meth:`Index.build_ann`)
  and re-scores exactly; ``auto`` uses the graph when one is built for the
  metric and the index holds at least :data:`fastimg.ann.ANN_CROSSOVER` live
  rows.  Rows added after the graph was last updated are scanned exactly and
  merged, so results never miss new rows.  Deleted rows are never returned.
  :meth:`Index.similar` searches by an indexed entry (its stored vector, leaving
  out exactly that entry); ``threshold=`` keeps hits within a score and
  ``where=`` the entries under a folder or matching a glob (an exact search).
  A writer updates the graph in memory and saves it lazily (:meth:`Index.flush`,
  :mod:`fastimg.index.graph`).
* **Linear map** (:mod:`fastimg.index.whitening`): an optional PCA-whitening
  fitted on the collection (:meth:`Index.fit_whitening`), or a projection
  learned from labelled images (:meth:`Index.fit_projection`, metric
  learning), stored in the index - one at a time; while one is fitted, every
  search compares mapped vectors (the raw vectors are kept unchanged; the
  mapped matrix is a rebuildable cache, :mod:`fastimg.index.caches`).
* **Ids**: an image's id is its row in the vector file.  Ids are stable across
  ``add`` and ``remove``; :meth:`Index.compact` renumbers them (it returns the
  old-to-new mapping).

Index location for the CLI: :func:`default_index_path`.

Modules (each imports only those below it)::

    _index       Index: create/open and the writer's calls (add, remove, compact, linear map, graph)
    _reader      IndexReader (Index's base): properties, info, lookups, search, similar; Hit, Entry, BatchResult
    searching    Search: space, exact/graph candidates, filters, self, re-ranking, threshold
    query        Queries: path/bytes/array/vector/entry -> vector + self ids; where= patterns
    check        check / check_index: CheckReport (Index.check, fastimg check)
    ingest       Ingest: scan, hash, moves, batches, re-description; AddReport; remove's resolution
    graph        Graph: HNSW build, load + catch-up, lazy save, choice of mode
    whitening    Whitening: the linear map (whitening or learned projection): fit, clear, load-and-verify, mapped matrix
    scan         Scans: exact scans over the cached prefix + rows prepared in memory; merging
    descriptor   the index's descriptor (registry or "custom")
    caches       Caches: derived .npy files (prepared matrices, whitened matrix), written by writers
    view         Views: the committed state, refreshed only after a commit; filters per state
    store        Store: the on-disk format (manifest, vectors, SQLite, lock, compaction)
    _files       the store's file steps (durable writes, manifest checks, lock file)
    _progress    the ``progress`` argument (tqdm bar or callback)
    locations    data_dir, default_index_path, missing_files
"""
from __future__ import annotations

from fastimg.index._index import Index
from fastimg.index._reader import BatchResult, Entry, Hit
from fastimg.index.caches import CACHE_SAVE_ROWS
from fastimg.index.descriptor import CUSTOM_DEFAULT_METRIC
from fastimg.index.graph import ANN_SAVE_ROWS
from fastimg.index.ingest import ADD_BATCH, IMAGE_EXTENSIONS, AddReport
from fastimg.index.locations import data_dir, default_index_path
from fastimg.index.whitening import WHITENING_FILE

__all__ = ["Index", "Hit", "Entry", "BatchResult", "AddReport", "default_index_path", "data_dir", "IMAGE_EXTENSIONS",
           "ADD_BATCH", "ANN_SAVE_ROWS", "CACHE_SAVE_ROWS", "WHITENING_FILE", "CUSTOM_DEFAULT_METRIC"]
