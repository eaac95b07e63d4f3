"""Read PyTorch ``.pth`` state dicts as NumPy arrays, without torch.

A ``.pth`` file written by ``torch.save(model.state_dict(), path)`` comes in
one of two containers (``torch/serialization.py``: ``_legacy_load`` and
``_load``):

*legacy* (torch < 1.6, and ``_use_new_zipfile_serialization=False``)
    five pickles back to back: the magic number ``0x1950a86a20f9469cfc6c``,
    the protocol version ``1001``, a sys-info dict (byte order, C type sizes),
    the state dict itself, then the list of storage keys; after them, for each
    key in that order, an 8-byte little-endian element count followed by the
    raw storage bytes.
*zip* (torch >= 1.6)
    a zip archive with one top-level folder holding ``data.pkl`` (the state
    dict), ``data/<key>`` (one member per storage, raw bytes) and optionally
    ``byteorder`` (``little`` / ``big``).

In both, the pickle refers to storages by *persistent id*
``('storage', storage_type, key, location, numel[, view_metadata])`` and
rebuilds tensors with ``torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, ...)``.  :func:`load_state_dict` unpickles with a restricted
unpickler whose ``find_class`` knows only the handful of globals a state dict
needs (``collections.OrderedDict``, the tensor-rebuild functions, the
``torch.*Storage`` types and ``torch`` dtypes), each mapped to a NumPy-side
stand-in; any other global (``os.system``, ``builtins.eval``, a model class
...) is refused with :class:`WeightFileError` before anything is called.

    >>> from fastimg.features.nets.pth import load_state_dict
    >>> sd = load_state_dict("efficientnet-lite0-57934424.pth")  # doctest: +SKIP
    >>> sd["_conv_stem.weight"].shape                             # doctest: +SKIP
    (32, 3, 3, 3)
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from fastimg.errors import DescriptorError

__all__ = ["WeightFileError", "load_state_dict", "LEGACY_MAGIC_NUMBER", "LEGACY_PROTOCOL_VERSION"]

#: First pickle of a legacy ``.pth`` file (``torch.serialization.MAGIC_NUMBER``).
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
#: Second pickle of a legacy ``.pth`` file (``torch.serialization.PROTOCOL_VERSION``).
LEGACY_PROTOCOL_VERSION = 1001

_ZIP_MAGIC = b"PK\x03\x04"

# ``torch.<Name>Storage`` -> NumPy dtype.  ``BFloat16Storage`` is read as raw
# uint16 and widened to float32 (NumPy has no bfloat16).
_STORAGE_DTYPES: Dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
    "UntypedStorage": np.dtype("u1"),
}

# ``torch.<dtype>`` globals (pickled by ``_rebuild_tensor_v3``) -> storage name.
_TORCH_DTYPES: Dict[str, str] = {
    "float64": "DoubleStorage",
    "double": "DoubleStorage",
    "float32": "FloatStorage",
    "float": "FloatStorage",
    "float16": "HalfStorage",
    "half": "HalfStorage",
    "bfloat16": "BFloat16Storage",
    "int64": "LongStorage",
    "long": "LongStorage",
    "int32": "IntStorage",
    "int": "IntStorage",
    "int16": "ShortStorage",
    "short": "ShortStorage",
    "int8": "CharStorage",
    "uint8": "ByteStorage",
    "bool": "BoolStorage",
}


class WeightFileError(DescriptorError):
    """A model weight file that cannot be read: not a ``.pth``, truncated,
    corrupt, or holding something other than a plain state dict.

    Attributes
    ----------
    path : str
        The file that failed.
    reason : str
        What is wrong with it.
    """

    def __init__(self, path: Union[str, os.PathLike], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# ----------------------------------------------------------------------------
# stand-ins for the torch objects a state-dict pickle builds
# ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _StorageType:
    """Stand-in for a ``torch.<Name>Storage`` class or a ``torch`` dtype
    (slotted and frozen, so a pickle's BUILD opcode cannot alter it)."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]


class _Storage:
    """A storage named in the pickle; its bytes are attached once read.

    ``root`` is None for a root storage; a view (legacy ``view_metadata``)
    points at its root and starts ``offset`` elements into it.
    """

    __slots__ = ("key", "stype", "numel", "data", "root", "offset")

    def __init__(self, key: str, stype: _StorageType, numel: int,
                 root: Optional["_Storage"] = None, offset: int = 0) -> None:
        self.key = key
        self.stype = stype
        self.numel = numel
        self.data: Optional[np.ndarray] = None
        self.root = root
        self.offset = offset

    def array(self) -> np.ndarray:
        """The storage's elements as a 1-D array (a view into the file bytes)."""
        if self.root is not None:
            base = self.root.array()
            return base[self.offset:self.offset + self.numel]
        assert self.data is not None
        return self.data


class _PendingTensor:
    """``_rebuild_tensor_v2``'s arguments, kept until the storages are read
    (in a legacy file the raw data comes after the pickle)."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: _Storage, offset: int, size: Tuple[int, ...], stride: Tuple[int, ...]) -> None:
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride


class _Refused(Exception):
    """Raised inside the unpickler; turned into :class:`WeightFileError`."""


def _int_tuple(x: Any, what: str) -> Tuple[int, ...]:
    if not isinstance(x, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in x):
        raise _Refused(f"tensor {what} is not a tuple of ints (got {x!r:.80})")
    return tuple(int(v) for v in x)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_: Any) -> _PendingTensor:
    """Stand-in for ``torch._utils._rebuild_tensor`` / ``_rebuild_tensor_v2``
    (the extra arguments - requires_grad, backward hooks, metadata - carry no
    data)."""
    if not isinstance(storage, _Storage):
        raise _Refused(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise _Refused(f"tensor storage offset {storage_offset!r} is not a non-negative int")
    size_t = _int_tuple(size, "size")
    stride_t = _int_tuple(stride, "stride")
    if len(size_t) != len(stride_t):
        raise _Refused(f"tensor size {size_t} and stride {stride_t} differ in length")
    return _PendingTensor(storage, storage_offset, size_t, stride_t)


class _RetypedStorage(_Storage):
    """An untyped (byte) storage read as ``stype``."""

    __slots__ = ("bytes_storage",)

    def __init__(self, bytes_storage: _Storage, stype: _StorageType) -> None:
        nbytes = bytes_storage.numel * bytes_storage.stype.dtype.itemsize
        super().__init__(bytes_storage.key, stype, nbytes // stype.dtype.itemsize)
        self.bytes_storage = bytes_storage

    def array(self) -> np.ndarray:
        return self.bytes_storage.array().view(self.stype.dtype)


def _rebuild_tensor_v3(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any, backward_hooks: Any, dtype: Any, *_: Any) -> _PendingTensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v3`` (untyped storage plus
    an explicit dtype)."""
    if not isinstance(dtype, _StorageType):
        raise _Refused(f"tensor dtype {dtype!r:.80} is not a torch dtype")
    if not isinstance(storage, _Storage):
        raise _Refused(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
    if storage.stype.name != "UntypedStorage" and storage.stype != dtype:
        raise _Refused(f"tensor of dtype {dtype.name} on a {storage.stype.name}")
    # reinterpret the storage's bytes with the tensor's dtype
    item = dtype.dtype.itemsize
    if storage.numel * storage.stype.dtype.itemsize % item:
        raise _Refused(f"storage {storage.key} is not a whole number of {dtype.name} elements")
    return _rebuild_tensor(_RetypedStorage(storage, dtype), storage_offset, size, stride)




def _rebuild_parameter(data: Any, *_: Any) -> Any:
    """Stand-in for ``torch._utils._rebuild_parameter`` (a Parameter is its
    tensor)."""
    if not isinstance(data, _PendingTensor):
        raise _Refused(f"parameter wraps a {type(data).__name__}, not a tensor")
    return data


class _Callable:
    """A whitelisted function as the pickle sees it: slotted, so BUILD
    opcodes aimed at it fail instead of setting attributes on our module's
    functions."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)


_SAFE_FUNCTIONS: Dict[Tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}
_SAFE_TYPES: Dict[Tuple[str, str], str] = {("torch", name): name for name in _STORAGE_DTYPES}
_SAFE_TYPES.update({("torch", name): st for name, st in _TORCH_DTYPES.items()})


def _safe_global(module: str, name: str) -> Any:
    """A fresh stand-in for one whitelisted global (KeyError otherwise)."""
    if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict  # a C type: its attributes cannot be set
    if (module, name) in _SAFE_FUNCTIONS:
        return _Callable(_SAFE_FUNCTIONS[(module, name)])
    return _StorageType(_SAFE_TYPES[(module, name)])


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of :func:`_safe_global` and turns storage
    persistent ids into :class:`_Storage` records.

    Parameters
    ----------
    file : binary file
        Positioned at the pickle to read.
    storages : dict
        Storage key -> :class:`_Storage`, shared by every tensor of the file
        (filled as persistent ids are met).
    legacy : bool
        Whether persistent ids may carry legacy ``view_metadata``.
    """

    def __init__(self, file: Any, storages: Dict[str, _Storage], legacy: bool) -> None:
        super().__init__(file, encoding="utf-8")
        self._storages = storages
        self._legacy = legacy

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        try:
            return _safe_global(module, name)
        except (KeyError, TypeError):
            raise _Refused(
                f"the pickle asks for the global {module}.{name}, which a plain state dict does not "
                "need; refusing to load it (only OrderedDict, tensors and storages are allowed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:  # noqa: D401 - pickle API
        if not isinstance(pid, tuple) or not pid:
            raise _Refused(f"unexpected persistent id {pid!r:.80}")
        typename = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if typename != "storage":
            raise _Refused(f"persistent id of type {typename!r:.40} (only 'storage' is supported)")
        data = pid[1:]
        if len(data) == 4:
            stype, key, _location, numel = data
            view = None
        elif len(data) == 5 and self._legacy:
            stype, key, _location, numel, view = data
        else:
            raise _Refused(f"storage persistent id with {len(data)} fields")
        if not isinstance(stype, _StorageType) or stype.name not in _STORAGE_DTYPES:
            raise _Refused(f"storage of unknown type {stype!r:.60}")
        key = str(key)
        if not isinstance(numel, int) or numel < 0:
            raise _Refused(f"storage {key} has a bad element count {numel!r:.40}")
        root = self._storages.get(key)
        if root is None:
            root = _Storage(key, stype, numel)
            self._storages[key] = root
        elif root.stype != stype or root.numel != numel:
            raise _Refused(f"storage {key} is declared twice with different types or sizes")
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3):
            raise _Refused(f"storage {key} has bad view metadata {view!r:.80}")
        view_key, offset, view_size = view
        if not (isinstance(offset, int) and isinstance(view_size, int)
                and 0 <= offset and 0 <= view_size and offset + view_size <= numel):
            raise _Refused(f"storage view {view_key} [{offset}, +{view_size}) is outside storage {key} of {numel}")
        return _Storage(str(view_key), stype, view_size, root=root, offset=offset)


# ----------------------------------------------------------------------------
# the two containers
# ----------------------------------------------------------------------------
def _plain_pickle(buf: io.BytesIO) -> Any:
    """One of the legacy header pickles (plain data; no global is allowed)."""
    return _StateDictUnpickler(buf, {}, legacy=True).load()


def _read_legacy(raw: bytes) -> Tuple[Any, Dict[str, _Storage]]:
    buf = io.BytesIO(raw)
    try:
        magic = _plain_pickle(buf)
    except (_Refused, pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError,
            KeyError, AttributeError, struct.error, UnicodeDecodeError, MemoryError) as exc:
        raise _Refused(f"not a PyTorch .pth file (neither a zip nor a legacy pickle stream: {exc})") from None
    if magic != LEGACY_MAGIC_NUMBER:
        raise _Refused(f"not a PyTorch .pth file (first pickle is {magic!r:.40}, not the legacy magic number)")
    protocol = _plain_pickle(buf)
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise _Refused(f"legacy protocol version {protocol!r:.40}, expected {LEGACY_PROTOCOL_VERSION}")
    sys_info = _plain_pickle(buf)
    if not isinstance(sys_info, dict):
        raise _Refused(f"legacy sys-info is a {type(sys_info).__name__}, not a dict")
    if not sys_info.get("little_endian", True):
        raise _Refused("written on a big-endian machine (only little-endian files are supported)")

    storages: Dict[str, _Storage] = {}
    obj = _StateDictUnpickler(buf, storages, legacy=True).load()
    keys = _plain_pickle(buf)
    if not isinstance(keys, list):
        raise _Refused(f"legacy storage key list is a {type(keys).__name__}, not a list")

    pos = buf.tell()
    for key in keys:
        key = str(key)
        st = storages.get(key)
        if st is None:
            raise _Refused(f"storage {key} is listed but no tensor uses it")
        if pos + 8 > len(raw):
            raise _Refused(f"truncated: storage {key} header at byte {pos} is past the end ({len(raw)} bytes)")
        (count,) = struct.unpack_from("<q", raw, pos)
        pos += 8
        if count != st.numel:
            raise _Refused(f"storage {key} holds {count} elements in the data section but the pickle says {st.numel}")
        nbytes = count * st.stype.dtype.itemsize
        if pos + nbytes > len(raw):
            raise _Refused(
                f"truncated: storage {key} needs {nbytes} bytes at byte {pos} but the file has {len(raw)}"
            )
        st.data = np.frombuffer(raw, dtype=st.stype.dtype, count=count, offset=pos)
        pos += nbytes
    missing = [k for k, st in storages.items() if st.data is None]
    if missing:
        raise _Refused(f"storages {missing[:5]} are used by tensors but have no data")
    return obj, storages


def _read_zip(path: Path) -> Tuple[Any, Dict[str, _Storage]]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if any(n.endswith("/constants.pkl") for n in names):
            raise _Refused("a TorchScript archive (torch.jit.save), not a state dict")
        if len(pkls) != 1:
            raise _Refused(f"zip without exactly one '<folder>/data.pkl' (found {pkls[:3]})")
        prefix = pkls[0][: -len("data.pkl")]
        byteorder = b"little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").strip()
        if byteorder != b"little":
            raise _Refused(f"storages written {byteorder!r} endian (only little-endian files are supported)")
        storages: Dict[str, _Storage] = {}
        obj = _StateDictUnpickler(io.BytesIO(zf.read(pkls[0])), storages, legacy=False).load()
        for key, st in storages.items():
            member = f"{prefix}data/{key}"
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise _Refused(f"storage {key} has no member {member!r}") from None
            nbytes = st.numel * st.stype.dtype.itemsize
            if info.file_size != nbytes:  # checked before reading: no zip bomb
                raise _Refused(f"storage {key} has {info.file_size} bytes, expected {nbytes} ({st.numel} elements)")
            blob = zf.read(info)
            st.data = np.frombuffer(blob, dtype=st.stype.dtype)
    return obj, storages


def _materialise(t: _PendingTensor) -> np.ndarray:
    """Copy a tensor out of its storage (honouring offset and strides)."""
    base = t.storage.array()
    shape, strides = t.size, t.stride
    if any(s < 0 for s in shape) or any(s < 0 for s in strides):
        raise _Refused(f"negative size {shape} or stride {strides}")
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if n == 0:
        out = np.empty(shape, dtype=base.dtype)
    elif n > base.size:
        raise _Refused(
            f"tensor of size {shape} has {n} elements, more than its storage's {base.size} "
            "(broadcast strides are not supported)"
        )
    else:
        last = t.offset + sum((d - 1) * s for d, s in zip(shape, strides))
        if last >= base.size:
            raise _Refused(
                f"tensor of size {shape}, stride {strides}, offset {t.offset} reaches element {last} "
                f"of a storage of {base.size}"
            )
        item = base.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[t.offset:], shape=shape, strides=tuple(s * item for s in strides), writeable=False
        )
        out = np.array(view, order="C", copy=True)
    if t.storage.stype.name == "BFloat16Storage":
        out = (out.astype(np.uint32) << 16).view(np.float32)
    if sys.byteorder != "little" and out.dtype.byteorder == "<":  # pragma: no cover - big-endian hosts
        out = out.astype(out.dtype.newbyteorder("="))
    return out


_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


def load_state_dict(path: Union[str, os.PathLike]) -> Dict[str, np.ndarray]:
    """Read a PyTorch ``.pth`` state dict into NumPy arrays, without torch.

    Both containers are read: the legacy stream (torch < 1.6) and the zip
    archive (torch >= 1.6).  Only what a state dict needs is unpickled;
    a file asking for any other Python global is refused before anything
    is executed.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.pth`` file.  Its top-level object must be a mapping of name to
        tensor (a ``state_dict()``); a checkpoint holding one under
        ``"state_dict"``, ``"model_state_dict"`` or ``"model"`` is accepted too.

    Returns
    -------
    dict of str to numpy.ndarray
        The tensors, in file order, each a C-contiguous array that owns its
        memory.  Dtypes map as float32 -> float32, float16 -> float16,
        float64 -> float64, int64 -> int64, uint8 -> uint8, bool -> bool ...;
        bfloat16 is widened to float32.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    WeightFileError
        The file is not a ``.pth`` file, is truncated or corrupt, holds a
        global outside the whitelist, or is not a state dict.  Derives from
        :class:`fastimg.errors.DescriptorError` (a ``ValueError``).
    """
    p = Path(path)
    raw = p.read_bytes()
    if not raw:
        raise WeightFileError(p, "not a PyTorch .pth file (empty file)")
    try:
        if raw[:4] == _ZIP_MAGIC:
            obj, _ = _read_zip(p)
        else:
            obj, _ = _read_legacy(raw)
        if isinstance(obj, dict):
            for k in _STATE_DICT_KEYS:
                inner = obj.get(k)
                if isinstance(inner, dict) and not any(isinstance(v, _PendingTensor) for v in obj.values()):
                    obj = inner
                    break
        if not isinstance(obj, dict):
            raise _Refused(f"holds a {type(obj).__name__}, not a state dict (a mapping of name to tensor)")
        out: Dict[str, np.ndarray] = {}
        for k, v in obj.items():
            if not isinstance(v, _PendingTensor):
                raise _Refused(f"entry {k!r:.80} is a {type(v).__name__}, not a tensor")
            out[str(k)] = _materialise(v)
        return out
    except _Refused as exc:
        raise WeightFileError(p, str(exc)) from None
    except zipfile.BadZipFile as exc:
        raise WeightFileError(p, f"truncated or corrupt zip container ({exc})") from None
    except (pickle.UnpicklingError, EOFError) as exc:
        raise WeightFileError(p, f"truncated or corrupt pickle ({type(exc).__name__}: {exc})") from None
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, struct.error,
            UnicodeDecodeError, OverflowError, MemoryError) as exc:
        # malformed opcodes make the unpickler raise assorted built-in errors
        raise WeightFileError(p, f"corrupt pickle ({type(exc).__name__}: {exc})") from None
