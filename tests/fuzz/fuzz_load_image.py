"""Fuzz :func:`fastimg.image.load_image` with arbitrary bytes (issue 15).

Property: for any input, ``load_image(data)`` returns a BGR ``uint8`` array of
shape ``(H, W, 3)`` (C-contiguous) or raises :class:`fastimg.errors.ImageError`;
any other exception, a hang or a native crash is a finding.

Two ways to run it:

* **fuzzing** (needs the ``fuzz`` extra: ``pip install -e .[fuzz]``; ``make fuzz``
  does everything)::

      python tests/fuzz/fuzz_load_image.py -runs=1000000 CORPUS_DIR SEED_DIR...

  libFuzzer's options apply (``-max_len``, ``-rss_limit_mb``, ``-timeout`` ...).
  atheris guides the mutations by the coverage of fastimg's own Python code
  (the header parsers, the format checks); OpenCV's decoders are native code
  built without coverage instrumentation, so they are exercised but not
  steered into.
* **replay** (no atheris needed; what ``make test`` runs through tests/test_fuzz.py)::

      python tests/fuzz/fuzz_load_image.py --replay FILE_OR_DIR...
      python tests/fuzz/fuzz_load_image.py --mutate N --seed S FILE_OR_DIR...

  ``--replay`` runs every file once; ``--mutate`` runs ``N`` deterministic
  mutations of them (bit flips, truncations, inserted and repeated bytes,
  overwritten header fields).  Exit status 0 when every input behaved.

A native crash inside a decoder cannot be caught in-process: fastimg's callers
that decode untrusted uploads should do it in a worker process (see
docs/reliability.md).
"""
from __future__ import annotations

import os
import sys

#: keeps the fuzzer's memory bounded (decoders allocate the declared size first)
MAX_PIXELS = 8_000_000


def _load():
    from fastimg.errors import ImageError
    from fastimg.image import load_image

    return load_image, ImageError


_LOADED = None


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    """One input: an array of the documented kind, or ImageError."""
    global _LOADED
    if _LOADED is None:
        _LOADED = _load()
    load_image, ImageError = _LOADED
    try:
        img = load_image(data, max_pixels=MAX_PIXELS)
    except ImageError as exc:
        if not exc.reason or str(exc).count("\n"):
            raise AssertionError(f"bad ImageError: {exc!r}") from None
        return
    if not (img.dtype.name == "uint8" and img.ndim == 3 and img.shape[2] == 3 and img.flags.c_contiguous
            and img.shape[0] * img.shape[1] <= MAX_PIXELS and img.size > 0):
        raise AssertionError(f"load_image returned {img.dtype} {img.shape}")


def _files(args):
    out = []
    for a in args:
        if os.path.isdir(a):
            out.extend(os.path.join(a, n) for n in sorted(os.listdir(a)) if os.path.isfile(os.path.join(a, n)))
        else:
            out.append(a)
    return out


def mutations(seeds, n: int, seed: int):
    """``n`` deterministic mutations of the byte strings ``seeds``."""
    import random

    rng = random.Random(seed)
    for _ in range(n):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(6)
            if not data:
                data = bytearray(b"\xff\xd8\xff")
            pos = rng.randrange(len(data))
            if op == 0:  # flip bits
                for _ in range(rng.randint(1, 8)):
                    p = rng.randrange(len(data))
                    data[p] ^= 1 << rng.randrange(8)
            elif op == 1:  # truncate
                del data[pos:]
            elif op == 2:  # insert random bytes
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
            elif op == 3:  # repeat a slice
                end = min(len(data), pos + rng.randint(1, 64))
                data[pos:pos] = data[pos:end] * rng.randint(1, 4)
            elif op == 4:  # overwrite a header field with an extreme value
                p = rng.randrange(min(len(data), 64))
                data[p:p + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff",
                                            b"\x00\x00\x01\x00", b"\x80\x00\x00\x00"])
            else:  # delete a slice
                del data[pos:pos + rng.randint(1, 64)]
        yield bytes(data)


def main(argv) -> int:
    if argv[:1] == ["--replay"] or argv[:1] == ["--mutate"]:
        n, seed = 0, 0
        if argv[0] == "--mutate":
            n = int(argv[1])
            rest = argv[2:]
            if rest[:1] == ["--seed"]:
                seed = int(rest[1])
                rest = rest[2:]
        else:
            rest = argv[1:]
        files = _files(rest)
        seeds = []
        for f in files:
            with open(f, "rb") as fh:
                seeds.append(fh.read())
        inputs = mutations(seeds, n, seed) if n else iter(seeds)
        count = 0
        for count, data in enumerate(inputs, 1):
            try:
                TestOneInput(data)
            except Exception:
                sys.stderr.write(f"finding on input {count} ({len(data)} bytes): {data[:64]!r}...\n")
                raise
        print(f"{count} inputs, no finding")
        return 0

    import atheris

    with atheris.instrument_imports(include=["fastimg"]):
        import fastimg.image  # noqa: F401  (instrumented for coverage)
    atheris.Setup(argv if argv and argv[0] == sys.argv[0] else [sys.argv[0], *argv], TestOneInput)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
