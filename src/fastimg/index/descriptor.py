"""Which descriptor an index uses: resolved from its arguments at creation, from its
manifest afterwards (``fastimg.features.registry``), or the ``"custom"`` stand-in
for vectors computed by the caller."""
from __future__ import annotations

import json
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
    """The descriptor of an open index: the spec in force at a committed state
    (``meta`` key ``descriptor``; format 1: the manifest's), created on first use.

    A spec of an older descriptor version than this fastimg builds (the
    descriptor changed how it computes vectors) is *outdated*: nothing can be
    described for that index (vectors would not be comparable) until a writer
    re-describes its files (:meth:`fastimg.index.ingest.Ingest.redescribe`, run by
    ``Index.add``), which switches the rows and the spec in one commit.
    """

    def __init__(self, store: Store, value: Any = None):
        self._store = store
        self._made: dict[str, Any] = {}
        self.custom = store.manifest["descriptor"].get("name") == "custom"
        if value is not None:
            self._made[self._key(value.spec())] = value

    @staticmethod
    def _key(spec: dict) -> str:
        spec = dict(spec)
        spec.pop("version", None)
        return json.dumps(spec, sort_keys=True)

    def spec(self, view: Any = None) -> dict:
        """The spec in force at ``view`` (a :class:`~fastimg.index.view.View`), else now."""
        spec = view.get("descriptor") if view is not None else self._store.get_meta("descriptor")
        return dict(spec if isinstance(spec, dict) else self._store.manifest["descriptor"])

    def outdated(self, view: Any = None) -> Optional[tuple[int, int]]:
        """``(index's version, this fastimg's version)`` when the spec in force is of an
        older descriptor version, else None.

        Raises
        ------
        IndexFormatError
            The spec is of a newer version (written by a newer fastimg) or unknown.
        """
        if self.custom:
            return None
        spec = self.spec(view)
        cur = self.latest(view)
        have, now = spec.get("version", cur.version), int(cur.version)
        if not isinstance(have, int) or have > now:
            raise IndexFormatError(
                f"{self._store.path / MANIFEST}: descriptor {spec.get('name')!r} has version {have!r}, newer "
                f"than this fastimg's {now}: upgrade fastimg"
            )
        return (have, now) if have < now else None

    def latest(self, view: Any = None) -> Any:
        """This fastimg's descriptor for the name and parameters of the spec in force
        (what a re-description uses)."""
        spec = self.spec(view)
        if self.custom:
            return self._make(spec, lambda sp: CustomDescriptor(self._store.dim))
        spec.pop("version", None)  # this fastimg's version of it
        return self._make(spec, self._from_spec)

    def _from_spec(self, spec: dict) -> Any:
        from fastimg.features.registry import descriptor_from_spec

        try:
            desc = descriptor_from_spec(spec)
        except DescriptorError as exc:
            raise IndexFormatError(f"{self._store.path / MANIFEST}: {exc}") from None
        if int(desc.dim) != self._store.dim:
            raise IndexCorruptError(
                f"{self._store.path / MANIFEST}: descriptor {spec.get('name')!r} now has dimension "
                f"{desc.dim} but the index stores {self._store.dim}"
            )
        return desc

    def _make(self, spec: dict, make: Any) -> Any:
        key = self._key(spec)
        got = self._made.get(key)
        if got is None:
            got = self._made[key] = make(spec)
        return got

    def __call__(self, view: Any = None) -> Any:
        """The descriptor that made the rows of ``view`` (else of the current state).

        Raises
        ------
        IndexFormatError
            The rows are of an older descriptor version (see the class docstring).
        """
        if self.custom:
            return self.latest(view)
        old = self.outdated(view)
        if old is not None:
            spec = self.spec(view)
            raise IndexFormatError(
                f"{self._store.path}: the index holds {spec.get('name')!r} vectors of descriptor version {old[0]} "
                f"and this fastimg describes images with version {old[1]} (not comparable): open the index for "
                "writing and add images (`fastimg index DIR`, Index.add), which re-describes the indexed files "
                "first; until then only indexed images, names and vectors can be queries"
            )
        return self.latest(view)
