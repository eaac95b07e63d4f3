"""fastimg: fast content-based image search.

Import is cheap: heavy modules (numba, OpenCV, hnswlib, the compiled core) are
loaded lazily, on first use of the name that needs them.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fastimg._version import __version__
from fastimg.errors import (
    AnnSearchError,
    ArgumentError,
    DescriptorError,
    FastimgError,
    ImageError,
    ImageNotFoundError,
    IndexChangedError,
    IndexClosedError,
    IndexCorruptError,
    IndexError_,
    IndexExistsError,
    IndexFormatError,
    IndexLockedError,
    IndexNotFoundError,
    IndexReadOnlyError,
    IndexWriteError,
    NotInIndexError,
    ArgumentTypeError,
    DatasetError,
    DatasetNotFoundError,
)

# public name -> module that defines it (imported on first access)
_LAZY = {
    # exact search (fastimg.search, fastimg.metrics)
    "topk": "fastimg.search",
    "ExactSearcher": "fastimg.search",
    "METRICS": "fastimg.metrics",
    "metric_names": "fastimg.metrics",
    # image loading and descriptors (fastimg.image, fastimg.features.registry)
    "load_image": "fastimg.image",
    "describe": "fastimg.features.registry",
    "describe_many": "fastimg.features.registry",
    "descriptors": "fastimg.features.registry",
    "get_descriptor": "fastimg.features.registry",
    "descriptor_from_spec": "fastimg.features.registry",
    "register": "fastimg.features.registry",
    "Descriptor": "fastimg.features.registry",
    # the index (fastimg.index)
    "Index": "fastimg.index",
    "Hit": "fastimg.index",
    "Entry": "fastimg.index",
    "BatchResult": "fastimg.index",
    "AddReport": "fastimg.index",
    # near-duplicates (fastimg.dedup)
    "find_duplicates": "fastimg.dedup",
    "DuplicateGroup": "fastimg.dedup",
    # evaluation (fastimg.eval)
    "evaluate": "fastimg.eval",
    "load_dataset": "fastimg.eval",
    # approximate search (fastimg.ann)
    "HnswGraph": "fastimg.ann",
    # post-processing (fastimg.projection)
    "PCAWhitening": "fastimg.projection",
    "LinearProjection": "fastimg.projection",
    # metric learning (fastimg.learn)
    "learn_projection": "fastimg.learn",
    "split_labels": "fastimg.learn",
}

# Static, so type checkers (mypy --strict: no implicit re-export) see every public name;
# tests/test_typing.py checks it equals the errors plus the lazy table.
__all__ = [
    "__version__",
    "FastimgError",
    "ImageError",
    "ImageNotFoundError",
    "DescriptorError",
    "IndexNotFoundError",
    "IndexFormatError",
    "IndexCorruptError",
    "IndexLockedError",
    "IndexReadOnlyError",
    "IndexWriteError",
    "NotInIndexError",
    "AnnSearchError",
    "ArgumentError",
    "ArgumentTypeError",
    "IndexError_",
    "IndexExistsError",
    "IndexClosedError",
    "IndexChangedError",
    "DatasetError",
    "DatasetNotFoundError",
    "topk",
    "ExactSearcher",
    "METRICS",
    "metric_names",
    "load_image",
    "describe",
    "describe_many",
    "descriptors",
    "get_descriptor",
    "descriptor_from_spec",
    "register",
    "Descriptor",
    "Index",
    "Hit",
    "Entry",
    "BatchResult",
    "AddReport",
    "find_duplicates",
    "DuplicateGroup",
    "evaluate",
    "load_dataset",
    "HnswGraph",
    "PCAWhitening",
    "LinearProjection",
    "learn_projection",
    "split_labels",
]


if not TYPE_CHECKING:  # hidden from type checkers, so a misspelt name is an error there, not Any

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'fastimg' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from fastimg.ann import HnswGraph
    from fastimg.dedup import DuplicateGroup, find_duplicates
    from fastimg.eval import evaluate, load_dataset
    from fastimg.index import AddReport, BatchResult, Entry, Hit, Index
    from fastimg.image import load_image
    from fastimg.metrics import METRICS, metric_names
    from fastimg.features.registry import (
        Descriptor,
        describe,
        describe_many,
        descriptor_from_spec,
        descriptors,
        get_descriptor,
        register,
    )
    from fastimg.learn import learn_projection, split_labels
    from fastimg.projection import LinearProjection, PCAWhitening
    from fastimg.search import ExactSearcher, topk
