"""Which descriptor an index uses: resolved from its arguments at creation, from its
manifest afterwards (``fastimg.features.registry``), or the ``"custom"`` stand-in
for vectors computed by the caller."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from fastimg.errors import DescriptorError, IndexCorruptError, IndexFormatError
from fastimg.index.store import MANIFEST, Store

__all__ = ["CUSTOM_DEFAULT_METRIC", "CustomDescriptor", "IndexDescriptor", "descriptor_for"]

#: Metric of ``descriptor="custom"`` indexes when none is given.
CUSTOM_DEFAULT_METRIC = "cosine"


class CustomDescriptor:
    """Stand-in descriptor of ``descriptor="custom"`` indexes (vectors come from the caller)."""

    name = "custom"
    version = 1

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.default_metric = CUSTOM_DEFAULT_METRIC
        self.params: dict = {}

    def spec(self) -> dict:
        return {"name": "custom", "dim": self.dim, "version": self.version, "params": {}}


def descriptor_for(descriptor: Any, dim: Optional[int], params: dict) -> Any:
    """The descriptor object of ``Index.create(path, descriptor, dim=dim, **params)``.

    Raises
    ------
    DescriptorError
        Not a name, unknown descriptor or bad parameters, ``dim`` missing for
        ``"custom"`` or inconsistent with the descriptor.
    """
    if not isinstance(descriptor, str):
        raise DescriptorError(f"descriptor must be a name (str); got {type(descriptor).__name__}")
    if descriptor == "custom":
        if dim is None:
            raise DescriptorError("descriptor='custom' needs the vector dimension: Index.create(path, "
                                  "descriptor='custom', dim=D)")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or int(dim) < 1:
            raise DescriptorError(f"dim must be a positive integer; got {dim!r}")
        if params:
            raise DescriptorError(f"descriptor='custom' takes no parameters; got {sorted(params)}")
        return CustomDescriptor(int(dim))
    from fastimg.features.registry import get_descriptor

    desc = get_descriptor(descriptor, **params)
    if dim is not None and int(dim) != int(desc.dim):
        raise DescriptorError(
            f"dim={dim} does not match descriptor {descriptor!r} (dimension {desc.dim}); "
            "dim is only needed for descriptor='custom'"
        )
    return desc


class IndexDescriptor:
    """The descriptor of an open index, created from the manifest on first use."""

    def __init__(self, store: Store, value: Any = None):
        self._store = store
        self.value = value
        self.custom = store.manifest["descriptor"].get("name") == "custom"

    def __call__(self) -> Any:
        if self.value is None:
            store = self._store
            spec = store.manifest["descriptor"]
            if self.custom:
                self.value = CustomDescriptor(store.dim)
                return self.value
            from fastimg.features.registry import descriptor_from_spec

            try:
                desc = descriptor_from_spec(spec)
            except DescriptorError as exc:
                raise IndexFormatError(f"{store.path / MANIFEST}: {exc}") from None
            if int(desc.dim) != store.dim:
                raise IndexCorruptError(
                    f"{store.path / MANIFEST}: descriptor {spec.get('name')!r} now has dimension "
                    f"{desc.dim} but the index stores {store.dim}"
                )
            self.value = desc
        return self.value
