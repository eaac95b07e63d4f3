"""Fitting and clearing the index's linear map: a PCA-whitening or a learned projection (the methods of :class:`~fastimg.Index`)."""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

import numpy as np

from fastimg.errors import ArgumentError, DescriptorError

log = logging.getLogger("fastimg.index")


class LinearMapMethods:
    """Fitting and clearing the index's linear map: a PCA-whitening or a learned projection (the methods of :class:`~fastimg.Index`).

    A mixin of :class:`Index`: it relies on that class's attributes."""

    def fit_whitening(self, dim: Optional[int] = None, power: float = 0.0, *,
                      sample: Optional[int] = None) -> dict:
        """Fit a PCA-whitening on the indexed vectors; every later search runs in its space.

        Post-processing of issue 9: L2 -> PCA-whitening -> L2.  A
        :class:`fastimg.projection.PCAWhitening` is fitted on the live committed rows of
        :attr:`vectors` and saved atomically as ``whitening.npz`` in the index;
        its parameters are recorded in ``meta.sqlite`` (key ``whitening``).  The
        raw vectors stay the source of truth and are never modified.  From then
        on, :meth:`search` and :meth:`search_batch` transform the query with the
        stored fit and compare it with ``transform(vectors)`` (a derived matrix kept
        as a rebuildable cache file) using the metric asked for: whitened vectors
        are L2-normalised and signed, so ``cosine`` (the default of ``cnn-*`` and
        ``custom`` indexes), ``pearson``, ``l2`` and ``l1`` apply; the histogram
        metrics (non-negative data) are refused.  Scores are that metric's values
        on the whitened vectors.  Rows added later are transformed with the same
        fit (not re-fitted: ``info()["whitening"]["stale_rows"]`` counts them);
        calling this method again re-fits.  An HNSW graph serves the space it was
        built in: after fitting (or re-fitting, or :meth:`clear_whitening`),
        ``mode="auto"`` searches exactly and ``mode="ann"`` raises until
        :meth:`build_ann` is called again, which then builds it on the whitened
        vectors.  An index has one linear map: this replaces a learned
        projection (:meth:`fit_projection`).

        Parameters
        ----------
        dim : int, optional
            Output dimension (default and cap: ``min(index dim, live rows - 1)``).
        power : float, default 0.0
            Eigenvalue exponent: 0 = centring + PCA projection (best measured on
            Corel-1k), 0.5 = classical full whitening (see :class:`fastimg.projection.PCAWhitening`).
        sample : int, optional
            Fit on at most this many live rows, evenly spaced (default: all;
            fitting holds ``rows x dim`` float64 values in memory).

        Returns
        -------
        dict
            ``{"method": "pca-whitening", "dim": output dimension, "power",
            "n_fit": rows fitted on, "rows": committed rows at fit time,
            "generation", "fit_id": checksum of the file, "file": its name}``.

        Raises
        ------
        IndexReadOnlyError
            The index is open with ``mode="r"``.
        DescriptorError
            Bad ``dim``/``power``/``sample``, or fewer than 2 live rows.
        ValueError
            The index's default metric needs non-negative vectors (histogram metrics).
        """
        self._require_writable()
        with self._mutex:
            v = self._views.current()
            meta = self._whitening.fit(v, v.live_ids(), self.metric, dim, power, sample)
            self._search.clear()
            self._save_caches(force=True)
            return meta

    def clear_whitening(self) -> None:
        """Forget the whitening: searches compare the raw vectors again.

        Removes the whitening's file, its record and its caches (a no-op when no
        whitening is fitted, e.g. when a learned projection is).  An HNSW graph
        built on the whitened vectors must be rebuilt (:meth:`build_ann`) to
        serve ``mode="ann"`` again.

        Raises
        ------
        IndexReadOnlyError
            The index is open with ``mode="r"``.
        """
        self._clear_map(learned=False)

    def _clear_map(self, learned: bool) -> None:
        self._require_writable()
        with self._mutex:
            self._whitening.clear(learned=learned)
            self._search.clear()

    def fit_projection(self, labels: Any, method: str = "lda", dim: Optional[int] = None, **options: Any) -> dict:
        """Learn a projection from labelled images; every later search runs in its space.

        Metric learning (issue 20): :func:`fastimg.learn_projection` is fitted on
        the live rows the labels name, and stored and applied exactly like a
        PCA-whitening (:meth:`fit_whitening`, which it replaces: an index has one
        linear map): the file (``projection.<id>.npz``) and its record (key
        ``whitening`` of ``meta.sqlite``, ``method`` = ``"lda"``/``"nca"``) are
        committed at once, searches transform the query with it and compare it
        with the projected rows (a rebuildable cache) using a metric for signed
        vectors (``cosine``, ``pearson``, ``l2``, ``l1``), rows added later are
        projected with the same fit (``info()["projection"]["stale_rows"]``), and
        an HNSW graph built before is unused until :meth:`build_ann` is called
        again.  Calling this again re-fits.

        Parameters
        ----------
        labels : mapping, str or os.PathLike
            ``{item: label}`` (items: indexed file paths, ``add_vectors`` names or
            ids), a CSV file of ``path,label`` rows (relative paths as given or
            relative to the CSV's directory), or a directory with one
            sub-directory per class (the ``folders`` layout of ``fastimg eval``).
            See :func:`fastimg.learn.read_labels`.  Labelled items that are not
            in the index are ignored and counted (``labels.not_in_index``; a
            warning is logged) as long as 2 classes remain.
        method : {"lda", "nca"}, default "lda"
            See :mod:`fastimg.learn`.
        dim : int, optional
            Output dimension (default: the method's, e.g. ``n_classes - 1`` for LDA).
        **options
            The method's options (e.g. ``shrinkage``), see :data:`fastimg.learn.METHODS`.

        Returns
        -------
        dict
            The record: ``{"method", "dim", "n_fit", "params" (the method's
            parameters and fit statistics), "labels": {"given", "matched",
            "not_in_index", "classes"}, "rows", "generation", "fit_id", "file"}``,
            plus ``not_in_index_examples`` (up to 5 items not found).

        Raises
        ------
        IndexReadOnlyError
            The index is open with ``mode="r"``.
        ArgumentError
            Unreadable labels; none of them in the index; one image with two
            labels; fewer than 2 classes (or no class with 2 images) among the
            indexed ones; a bad ``method``, ``dim`` (e.g. larger than the index
            dimension) or option; an index metric for non-negative vectors.
        """
        from fastimg.index.whitening import match_labels
        from fastimg.learn import read_labels

        self._require_writable()
        pairs, base = read_labels(labels)
        with self._mutex:
            v = self._views.current()

            def find(item: Any) -> Optional[int]:
                if isinstance(item, (bool, np.bool_)):
                    return None
                if isinstance(item, (int, np.integer)):
                    return int(item) if 0 <= int(item) < v.state.committed and v.is_live(int(item)) else None
                if not isinstance(item, (str, os.PathLike)):
                    return None
                row = self._store.find_entry(item)
                return None if row is None or row.id >= v.state.committed else int(row.id)

            ids, labs, report, missing = match_labels(find, pairs, base, self.path)
            if missing:
                n = report["not_in_index"]
                log.warning("%s: %d labelled %s not in the index and %s ignored (e.g. %s)", self.path, n,
                            "item is" if n == 1 else "items are", "was" if n == 1 else "were",
                            ", ".join(map(str, missing)))
            try:
                meta = self._whitening.learn(v, ids, labs, self.metric, method, dim, options, report)
            except DescriptorError as exc:
                ignored = (f" ({report['not_in_index']} labelled items not in the index were ignored)"
                           if report["not_in_index"] else "")
                raise ArgumentError(f"{self.path}: fit_projection: {exc}{ignored}") from None
            self._search.clear()
            self._save_caches(force=True)
            return dict(meta, not_in_index_examples=missing)

    def clear_projection(self) -> None:
        """Forget the learned projection: searches compare the raw vectors again.

        Removes its file, its record and its caches (a no-op when no projection
        is fitted, e.g. when a PCA-whitening is).  An HNSW graph built on the
        projected vectors must be rebuilt (:meth:`build_ann`) to serve
        ``mode="ann"`` again.

        Raises
        ------
        IndexReadOnlyError
            The index is open with ``mode="r"``.
        """
        self._clear_map(learned=True)
