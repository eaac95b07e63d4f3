"""Decode each corpus file with fastimg in this process, one JSON line per file.

Run by tests/test_bad_inputs.py in a child process, so that a native crash in
a decoder fails that test (naming the file) instead of killing the test run::

    python tests/corpus/decode_each.py PATHS_JSON OUT_DIR

``PATHS_JSON`` holds a list of paths as hex-encoded bytes (any file name).
For each path ``i`` this prints ``{"i": i, "start": true}`` before decoding, then
``{"i": i, "ok": true, "shape": [...]}`` (the array saved as ``OUT_DIR/i.npy``)
or ``{"i": i, "ok": false, "type": ..., "reason": ..., "message": ...}``.  It
also describes each decodable file (``hsv72``, both the single-image and the
batch paths) and checks that the two agree.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np


def main(paths_json: str, out_dir: str) -> int:
    import fastimg
    from fastimg.errors import ImageError
    from fastimg.features.registry import describe, describe_many
    from fastimg.image import load_image

    with open(paths_json) as fh:
        paths = [os.fsdecode(bytes.fromhex(h)) for h in json.load(fh)]
    for i, path in enumerate(paths):
        print(json.dumps({"i": i, "start": True}), flush=True)
        try:
            img = load_image(path)
        except ImageError as exc:
            rec = {"i": i, "ok": False, "type": "ImageError", "class": type(exc).__name__, "reason": exc.reason,
                   "message": str(exc), "source_ok": exc.source == path}
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            rec = {"i": i, "ok": False, "type": type(exc).__name__, "reason": None, "message": repr(exc)}
        else:
            np.save(os.path.join(out_dir, f"{i}.npy"), img)
            rec = {"i": i, "ok": True, "shape": list(img.shape)}
            try:
                one = describe(path, "hsv72")
                many, errors = describe_many([path], "hsv72", workers=1)
                rec["describe_ok"] = bool(not errors and np.array_equal(one, many[0]) and abs(one.sum() - 1) < 1e-5)
            except BaseException as exc:  # noqa: BLE001
                rec["describe_ok"] = False
                rec["describe_error"] = repr(exc)
        print(json.dumps(rec), flush=True)
    assert fastimg  # imported first, as an application would
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
