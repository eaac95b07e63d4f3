"""A small photo app embedding fastimg, written as a user would write it.

It catches only the exception types fastimg documents, and it must stay clean under
``mypy --strict`` (tests/test_typing.py runs both).  Usage::

    python photo_app.py INDEX_DIR PHOTOS_DIR QUERY_IMAGE

Prints one JSON document: what was indexed and skipped, the hits of a search by
file, by entry and in a folder, a batch, the duplicates, and the errors it met.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

import fastimg


def hits_json(hits: list[fastimg.Hit]) -> list[dict[str, Any]]:
    return [{"id": h.id, "path": h.path, "score": h.score, "rank": h.rank} for h in hits]


def main(argv: list[str]) -> int:
    index_dir, photos, query = Path(argv[0]), Path(argv[1]), Path(argv[2])
    out: dict[str, Any] = {"errors": []}
    try:
        index = fastimg.Index.create(index_dir, descriptor="hsv72", metric="pearson")
    except fastimg.IndexExistsError as exc:  # already there: open it for writing
        out["errors"].append(f"create: {exc}")
        index = fastimg.Index.open(index_dir, mode="a")
    with index:
        report: fastimg.AddReport = index.add(photos)
        out["added"] = report.added
        out["skipped"] = sorted(report.skipped)
        out["live"] = len(index)
        first: fastimg.Entry = next(iter(index))
        out["first_entry"] = {"id": first.id, "path": first.path, "in": first.path in index}

        out["by_file"] = hits_json(index.search(query, k=5))
        out["by_entry"] = hits_json(index.similar(first.id, k=3))
        out["threshold"] = hits_json(index.search(query, k=50, threshold=0.5))
        sub = sorted({str(Path(e.path).parent.relative_to(index.root)) for e in index})[0]
        out["where"] = hits_json(index.search(query, k=50, where=sub))
        out["where_folder"] = sub

        vectors: np.ndarray = index.vectors_of([first.id, first.path])
        batch: fastimg.BatchResult = index.search_batch(vectors, k=4)
        out["batch_ids"] = [batch.row(r)[0].tolist() for r in range(len(vectors))]

        # pearson has no calibrated default for hsv72 (fastimg.dedup.THRESHOLDS): a threshold is given
        groups: list[fastimg.DuplicateGroup] = list(index.duplicates(threshold=0.99))
        out["duplicate_groups"] = [sorted(g.paths) for g in groups]

        # the documented errors, each caught by its own type
        try:
            index.search(np.zeros(index.dim + 1, np.float32))
        except fastimg.ArgumentError as exc:
            out["errors"].append(f"search: {exc}")
        try:
            index.similar(photos / "not-indexed.jpg")
        except fastimg.NotInIndexError as exc:
            out["errors"].append(f"similar: {exc}")
        try:
            index.search(photos / "no-such-file.jpg")
        except fastimg.ImageError as exc:
            out["errors"].append(f"image: {exc.reason}")

    # the pieces on their own: describe_many -> topk, dropping the rows that failed
    paths = sorted(p for p in photos.rglob("*") if p.is_file())
    matrix, failed = fastimg.describe_many(paths, "hsv72")
    good = [i for i in range(len(paths)) if i not in failed]
    qvec: np.ndarray = fastimg.describe(query, "hsv72")
    ids, scores = fastimg.topk(np.ascontiguousarray(matrix[good]), qvec, k=5, metric="pearson")
    out["topk"] = [{"path": str(paths[good[int(i)]]), "score": float(s)} for i, s in zip(ids, scores)]
    out["describe_failed"] = sorted(str(paths[i]) for i in failed)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except fastimg.FastimgError as exc:  # anything else is a bug in fastimg or here
        print(f"photo_app: {exc}", file=sys.stderr)
        sys.exit(2)
