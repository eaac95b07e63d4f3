"""Write the small ``.pth`` fixtures of ``tests/test_nets.py`` with real torch.

Not run by the test suite (the suite needs no torch).  It was run once, in a
throw-away virtual environment outside the repository::

    python3 -m venv /tmp/torchref
    /tmp/torchref/bin/pip install torch==2.13.0 numpy
    /tmp/torchref/bin/python tests/data/make_pth_fixtures.py

and wrote, next to this script:

``pth_zip.pth``      the state dict below, ``torch.save`` default (zip) container
``pth_legacy.pth``   the same, ``_use_new_zipfile_serialization=False`` (legacy)
``pth_expected.npz`` every tensor as ``tensor.numpy()`` (bfloat16 widened to
                     float32), the oracle for ``fastimg.features.nets.pth.load_state_dict``

The state dict covers what a reader can get wrong: every common dtype, a 0-d
and an empty tensor, a transposed (non-contiguous) tensor, two slices sharing
one storage at different offsets, a strided view, and an ``nn.Parameter``.
"""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    rng = np.random.default_rng(16)
    base = torch.from_numpy(rng.standard_normal((6, 5)).astype(np.float32))
    shared = torch.from_numpy(rng.standard_normal(40).astype(np.float32))
    sd: "collections.OrderedDict[str, torch.Tensor]" = collections.OrderedDict()
    sd["f32"] = torch.from_numpy(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    sd["f16"] = torch.from_numpy(rng.standard_normal((7,)).astype(np.float16))
    sd["f64"] = torch.from_numpy(rng.standard_normal((2, 3)))
    sd["bf16"] = torch.from_numpy(rng.standard_normal((5,)).astype(np.float32)).to(torch.bfloat16)
    sd["i64"] = torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4)
    sd["i32"] = torch.tensor([1, -2, 2**31 - 1], dtype=torch.int32)
    sd["i8"] = torch.tensor([-128, 0, 127], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 1, 255], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True, True])
    sd["scalar"] = torch.tensor(7, dtype=torch.int64)          # like num_batches_tracked
    sd["empty"] = torch.zeros((0, 3), dtype=torch.float32)
    sd["transposed"] = base.t()                                  # stride (1, 5)
    sd["slice_a"] = shared[3:13].view(2, 5)                      # offset 3 into a shared storage
    sd["slice_b"] = shared[20:32:3]                              # offset 20, stride 3
    sd["column"] = base[:, 2]                                    # offset 2, stride 5
    sd["param"] = torch.nn.Parameter(torch.linspace(-1, 1, 6).reshape(2, 3), requires_grad=True)

    torch.save(sd, HERE / "pth_zip.pth")
    torch.save(sd, HERE / "pth_legacy.pth", _use_new_zipfile_serialization=False)
    expected = {k: (v.detach().float() if v.dtype == torch.bfloat16 else v.detach()).numpy() for k, v in sd.items()}
    np.savez(HERE / "pth_expected.npz", **expected)

    # the files must load back in torch itself
    for name in ("pth_zip.pth", "pth_legacy.pth"):
        back = torch.load(HERE / name, weights_only=True)
        assert list(back) == list(sd)
        for k in sd:
            assert torch.equal(back[k], sd[k].detach()), (name, k)
    print("torch", torch.__version__, "wrote", ", ".join(sorted(p.name for p in HERE.glob("pth_*"))))


if __name__ == "__main__":
    main()
