"""Labelled image collections for evaluation: the ``folders``, ``ukbench`` and ``holidays``
layouts (:func:`load_dataset`), as :func:`fastimg.eval.evaluate` and ``fastimg eval`` read them."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from fastimg.errors import ArgumentError, DatasetError, DatasetNotFoundError
from fastimg.index.ingest import IMAGE_EXTENSIONS  # the files an index picks up are the files a dataset has

__all__ = ["Dataset", "load_dataset", "LAYOUTS", "DEFAULT_MEASURES", "IMAGE_EXTENSIONS"]




LAYOUTS = ("folders", "ukbench", "holidays")


DEFAULT_MEASURES = {"folders": ("map", "p@10", "p@20"), "ukbench": ("ns", "map"), "holidays": ("map", "p@1")}


@dataclass(frozen=True)
class Dataset:
    """A labelled image collection and its evaluation protocol.

    Attributes
    ----------
    root : Path
    layout : str
        ``"folders"``, ``"ukbench"`` or ``"holidays"``.
    paths : list of Path
        Every database image (``N``), in id order.
    labels : ndarray of int64, shape (N,)
        Class (folders) or group (ukbench, holidays) of each image.  An image is
        relevant to a query when it has the query's label.
    queries : ndarray of int64, shape (Q,)
        Database ids of the query images (they are also database items).
    exclude_query : bool
        True: each query is left out of its own ranking and never counts as
        relevant (folders, holidays).  False: the query stays in the database and
        counts as one of its relevant items (UKBench N-S protocol).
    class_names : list of str
        Name of each label value (folder name, or the group number as text).
    """

    root: Path
    layout: str
    paths: list
    labels: np.ndarray
    queries: np.ndarray
    exclude_query: bool
    class_names: list

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def n_relevant(self) -> np.ndarray:
        """Relevant items per query in the collection, shape (Q,)."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return counts[self.labels[self.queries]] - (1 if self.exclude_query else 0)

    def describe(self) -> str:
        """One line: layout, size, queries, classes."""
        rule = "query excluded" if self.exclude_query else "query counted"
        return (f"{self.root} ({self.layout}): {len(self.paths)} images, {len(self.queries)} queries, "
                f"{len(self.class_names)} {'classes' if self.layout == 'folders' else 'groups'}, {rule}")


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _images_under(d: Path) -> list:
    return sorted((p for p in d.rglob("*") if _is_image(p)), key=lambda p: p.relative_to(d).as_posix())


def load_dataset(root: "str | os.PathLike[str]", layout: str = "folders", *,
                 groups_file: Optional[str] = "groups.csv") -> Dataset:
    """Read a labelled collection in one of the standard layouts.

    Parameters
    ----------
    root : path
        The collection's directory.
    layout : {"folders", "ukbench", "holidays"}
        * ``"folders"`` (Corel / Wang style): every immediate sub-directory is a class
          holding its images (searched recursively); every image queries all the
          others, the query left out.
        * ``"ukbench"``: ``groups.csv`` (columns ``file,group``, paths relative to
          ``root``) if present, else every image under ``root`` whose name ends in a
          number ``n`` (``ukbench00012.jpg``) belongs to group ``n // 4``.  Every image
          queries the whole collection *including itself*, as the N-S score counts it.
        * ``"holidays"`` (INRIA Holidays naming): image ``NNNNNN.jpg`` has group
          ``NNNNNN // 100``; the images whose number ends in ``00`` are the queries,
          the rest of their group is relevant, the query is left out of its ranking.
    groups_file : str or None, default "groups.csv"
        File name of the UKBench groups table (None: always use the numbering).

    Returns
    -------
    Dataset

    Raises
    ------
    FileNotFoundError
        ``root`` is not a directory.
    ValueError
        Unknown layout, no images, or names that do not follow the layout.
    """
    if layout not in LAYOUTS:
        raise ArgumentError(f"layout must be one of {list(LAYOUTS)}; got {layout!r}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DatasetNotFoundError(f"dataset directory not found: {base}")
    if layout == "folders":
        classes = sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
        paths, labels, names = [], [], []
        for d in classes:
            imgs = _images_under(d)
            if not imgs:
                continue
            names.append(d.name)
            paths.extend(imgs)
            labels.extend([len(names) - 1] * len(imgs))
        if not paths:
            raise DatasetError(f"layout 'folders': no class sub-directory with images under {base} "
                             f"(expected {base}/<class>/<image>.jpg)")
        lab = np.asarray(labels, dtype=np.int64)
        return Dataset(base, layout, paths, lab, np.arange(len(paths), dtype=np.int64), True, names)
    if layout == "ukbench":
        table = base / groups_file if groups_file else None
        if table is not None and table.is_file():
            import csv
            with open(table, newline="") as fh:
                reader = csv.DictReader(fh)
                if not reader.fieldnames or not {"file", "group"} <= set(reader.fieldnames):
                    raise DatasetError(f"{table}: expected the columns 'file,group'; got {reader.fieldnames}")
                rows = [(r["file"], r["group"]) for r in reader]
            paths, groups = [], []
            for f, g in rows:
                p = base / f
                if not p.is_file():
                    raise DatasetError(f"{table}: listed image not found: {p}")
                try:
                    groups.append(int(g))
                except ValueError:
                    raise DatasetError(f"{table}: group of {f!r} must be an integer; got {g!r}") from None
                paths.append(p)
        else:
            paths, groups = [], []
            for p in _images_under(base):
                mnum = re.search(r"(\d+)$", p.stem)
                if not mnum:
                    raise DatasetError(f"layout 'ukbench': {p.name!r} does not end in an image number "
                                     "(expected e.g. ukbench00012.jpg) and there is no groups.csv")
                paths.append(p)
                groups.append(int(mnum.group(1)) // 4)
            order = np.argsort([int(re.search(r"(\d+)$", p.stem).group(1)) for p in paths], kind="stable")
            paths = [paths[i] for i in order]
            groups = [groups[i] for i in order]
        if not paths:
            raise DatasetError(f"layout 'ukbench': no images under {base}")
        uniq, lab = np.unique(np.asarray(groups, dtype=np.int64), return_inverse=True)
        return Dataset(base, layout, paths, lab.astype(np.int64), np.arange(len(paths), dtype=np.int64), False,
                       [str(g) for g in uniq])
    # holidays
    paths, nums = [], []
    for p in _images_under(base):
        if not p.stem.isdigit():
            raise DatasetError(f"layout 'holidays': {p.name!r} is not named by its image number "
                             "(expected e.g. 100000.jpg, 100001.jpg; group = number // 100)")
        paths.append(p)
        nums.append(int(p.stem))
    if not paths:
        raise DatasetError(f"layout 'holidays': no images under {base}")
    order = np.argsort(nums, kind="stable")
    paths = [paths[i] for i in order]
    num = np.asarray(nums, dtype=np.int64)[order]
    uniq, lab = np.unique(num // 100, return_inverse=True)
    queries = np.flatnonzero(num % 100 == 0).astype(np.int64)
    if queries.size == 0:
        raise DatasetError(f"layout 'holidays': no query image (number ending in 00) under {base}")
    return Dataset(base, layout, paths, lab.astype(np.int64), queries, True, [str(g) for g in uniq])
