"""fastimg.nets: the torch-free .pth reader, the ONNX backbones and their weights.

The oracles come from outside our code: ``tests/data/pth_*.pth`` were written
by real torch 2.13 (``tests/data/make_pth_fixtures.py``), and
``tests/data/effnet_reference.npz`` holds features and logits computed by the
original PyTorch network code (``tests/data/make_effnet_reference.py``).  No
test needs torch.  Tests that need a weight wheel skip, saying which, only
when that wheel is not installed.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fastimg.errors import DescriptorError
from fastimg.nets.pth import LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, WeightFileError, load_state_dict

DATA = Path(__file__).resolve().parent / "data"


# ----------------------------------------------------------------------------
# .pth reader
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pth_zip.pth", "pth_legacy.pth"])
def test_pth_reader_matches_what_torch_wrote(name: str) -> None:
    expected = np.load(DATA / "pth_expected.npz")
    sd = load_state_dict(DATA / name)
    assert list(sd) == list(expected.files)  # file order kept
    for key in expected.files:
        got, want = sd[key], expected[key]
        assert got.dtype == want.dtype, key
        assert got.shape == want.shape, key
        np.testing.assert_array_equal(got, want, err_msg=key)
        assert got.flags.c_contiguous and got.flags.writeable, key


def test_pth_reader_covers_dtypes_strides_and_offsets() -> None:
    sd = load_state_dict(DATA / "pth_legacy.pth")
    assert {sd[k].dtype.name for k in sd} >= {"float32", "float16", "float64", "int64", "int32", "int8",
                                            "uint8", "bool"}
    assert sd["bf16"].dtype == np.float32  # bfloat16 widened
    assert sd["scalar"].shape == () and sd["scalar"] == 7
    assert sd["empty"].shape == (0, 3)
    assert sd["transposed"].shape == (5, 6)
    np.testing.assert_array_equal(sd["transposed"].T[:, 2], sd["column"])


def _legacy_bytes(obj_pickle: bytes, keys: list, data: bytes = b"") -> bytes:
    head = b"".join(pickle.dumps(x, protocol=2) for x in (
        LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION,
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}},
    ))
    return head + obj_pickle + pickle.dumps(keys, protocol=2) + data


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (str(self.target),))


def test_pth_reader_refuses_a_forbidden_global_in_a_legacy_file(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_bytes(pickle.dumps({"w": _Evil(target)}, protocol=2), []))
    with pytest.raises(WeightFileError, match=r"global (posix|os)\.mkdir"):
        load_state_dict(path)
    assert not target.exists()  # nothing was called


def test_pth_reader_refuses_a_forbidden_global_in_a_zip_file(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(
            {"w": type("R", (), {"__reduce__": lambda self: (os.system, ("true",))})()}, protocol=2))
    with pytest.raises(WeightFileError, match=r"global (posix|os)\.system") as info:
        load_state_dict(path)
    assert isinstance(info.value, DescriptorError) and isinstance(info.value, ValueError)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("global_", [b"builtins\neval\n", b"torch.nn.modules.conv\nConv2d\n", b"numpy\nload\n"])
def test_pth_reader_refuses_any_global_outside_the_whitelist(tmp_path: Path, global_: bytes) -> None:
    # protocol-2 pickle: GLOBAL <module> <name>, EMPTY_TUPLE, REDUCE, STOP
    evil = b"\x80\x02c" + global_ + b")R."
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_bytes(evil, []))
    name = global_.decode().replace("\n", ".", 1).strip()
    with pytest.raises(WeightFileError, match="global " + name.replace(".", r"\.")):
        load_state_dict(path)


@pytest.mark.parametrize("name", ["pth_legacy.pth", "pth_zip.pth"])
@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6, 0.9, 0.999])
def test_pth_reader_refuses_a_truncated_file(tmp_path: Path, name: str, fraction: float) -> None:
    raw = (DATA / name).read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(raw[: int(len(raw) * fraction)])
    with pytest.raises(WeightFileError, match=r"cut\.pth: truncated"):
        load_state_dict(path)


def test_pth_reader_says_where_a_legacy_data_section_ends_early(tmp_path: Path) -> None:
    raw = (DATA / "pth_legacy.pth").read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(raw[:-10])
    with pytest.raises(WeightFileError, match=r"truncated: storage \S+ needs \d+ bytes at byte \d+"):
        load_state_dict(path)


def _one_tensor_pickle(dict_global: bytes = b"collections\nOrderedDict\n") -> bytes:
    """Protocol-2 pickle of ``{"w": _rebuild_tensor_v2(<FloatStorage key "0", 3 elements>, 0, (3,), (1,),
    False, OrderedDict())}``, assembled opcode by opcode (``dict_global`` names the hooks' class)."""
    def text(s: str) -> bytes:  # BINUNICODE
        return b"X" + struct.pack("<I", len(s)) + s.encode()
    pid = b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text("0") + text("cpu") + b"K\x03Nt"  # 5-tuple
    args = b"(" + pid + b"Q" + b"K\x00" + b"K\x03\x85" + b"K\x01\x85" + b"\x89" + b"c" + dict_global + b")R" + b"t"
    return b"\x80\x02}" + text("w") + b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R" + b"s."


def test_pth_reader_refuses_a_storage_count_that_disagrees_with_the_pickle(tmp_path: Path) -> None:
    path = tmp_path / "bad.pth"
    good = struct.pack("<q", 3) + struct.pack("<3f", 1, 2, 3)
    path.write_bytes(_legacy_bytes(_one_tensor_pickle(), ["0"], good))
    np.testing.assert_array_equal(load_state_dict(path)["w"], np.array([1, 2, 3], np.float32))

    path.write_bytes(_legacy_bytes(_one_tensor_pickle(), ["0"], struct.pack("<q", 4) + b"\0" * 16))
    with pytest.raises(WeightFileError, match="storage 0 holds 4 elements in the data section but the pickle says 3"):
        load_state_dict(path)
    path.write_bytes(_legacy_bytes(_one_tensor_pickle(), ["1"], good))
    with pytest.raises(WeightFileError, match="storage 1 is listed but no tensor uses it"):
        load_state_dict(path)
    path.write_bytes(_legacy_bytes(_one_tensor_pickle(b"torch\nOrderedDict\n"), ["0"], good))
    with pytest.raises(WeightFileError, match=r"global torch\.OrderedDict"):
        load_state_dict(path)


@pytest.mark.parametrize("content", [b"", b"hello world", b"\x80\x02K\x05.", b"PK\x03\x04garbage"])
def test_pth_reader_refuses_files_that_are_not_pth(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(WeightFileError, match=r"x\.pth: "):
        load_state_dict(path)


def test_pth_reader_refuses_a_pickle_that_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    path.write_bytes(_legacy_bytes(pickle.dumps([1, 2, 3], protocol=2), []))
    with pytest.raises(WeightFileError, match="holds a list, not a state dict"):
        load_state_dict(path)
    path.write_bytes(_legacy_bytes(pickle.dumps({"epoch": 3}, protocol=2), []))
    with pytest.raises(WeightFileError, match="entry 'epoch' is a int, not a tensor"):
        load_state_dict(path)


def test_pth_reader_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "nope.pth")
