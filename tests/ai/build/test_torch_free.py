"""The torch-free checkpoint reader: real torch files in both layouts, and hostile ones."""

from __future__ import annotations

import io
import json
import pickle
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nachbar.ai.build.torch_free import (
    CheckpointFormatError,
    UnsafeCheckpointError,
    load_safetensors,
    load_torch_state_dict,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


# --- a minimal protocol-2 pickle writer, to forge checkpoints without torch ---------------------


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _tensor(
    key: str,
    numel: int,
    offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    storage: str = "FloatStorage",
) -> bytes:
    """The opcodes torch.save emits for one tensor: _rebuild_tensor_v2(storage, ...)."""
    persistent_id = _tuple(
        _str("storage"), _global("torch", storage), _str(key), _str("cpu"), _int(numel)
    )
    return (
        _global("torch._utils", "_rebuild_tensor_v2")
        + b"("
        + persistent_id
        + b"Q"  # BINPERSID
        + _int(offset)
        + _tuple(*(_int(v) for v in size))
        + _tuple(*(_int(v) for v in stride))
        + b"\x89"  # False: requires_grad
        + _global("collections", "OrderedDict")
        + b")R"  # backward hooks: OrderedDict()
        + b"tR"
    )


def _state_dict_pickle(entries: dict[str, bytes]) -> bytes:
    body = b"".join(_str(name) + value for name, value in entries.items())
    return b"\x80\x02" + _global("collections", "OrderedDict") + b")R(" + body + b"u."


def _zip_checkpoint(path: Path, data_pkl: bytes, storages: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        for key, raw in storages.items():
            archive.writestr(f"archive/data/{key}", raw)
    return path


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


# --- real torch files ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_reads_torch_checkpoints_in_both_layouts(layout: str) -> None:
    expected = json.loads((FIXTURES / "tiny_state_dict.json").read_text())
    state = load_torch_state_dict(FIXTURES / f"tiny_state_dict_{layout}.pth")

    assert list(state) == list(expected)  # order kept, as in the OrderedDict
    for name, spec in expected.items():
        array = state[name]
        assert array.dtype == np.dtype(spec["dtype"].replace("bool", "bool_")), name
        assert list(array.shape) == spec["shape"], name
        values = np.array(spec["values"], dtype=array.dtype).reshape(spec["shape"])
        np.testing.assert_array_equal(array, values, name)
        assert array.flags.c_contiguous and array.flags.writeable


def test_views_of_one_storage_are_copied_apart() -> None:
    state = load_torch_state_dict(FIXTURES / "tiny_state_dict_zip.pth")
    state["linear.row"][:] = -1  # was a view of linear.weight's second row in torch
    assert state["linear.weight"][1].tolist() == [0.5, 0.625, 0.75, 0.875]


def test_reads_the_efficientnet_checkpoint_without_torch() -> None:
    from nachbar.ai.build.builder import EFFICIENTNET_CHECKPOINT
    from nachbar.ai.build.sources import EFFICIENTNET_LITE0, locate

    state = load_torch_state_dict(locate(EFFICIENTNET_LITE0, EFFICIENTNET_CHECKPOINT))
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert all(v.dtype in (np.float32, np.int64) for v in state.values())
    assert "torch" not in sys.modules


def test_safetensors_are_read_as_numpy(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, str(tmp_path / "m.safetensors"))
    loaded = load_safetensors(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(loaded["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointFormatError):
        load_safetensors(tmp_path / "bad.safetensors")


def test_forged_checkpoint_with_allowed_globals_loads(tmp_path: Path) -> None:
    # Guards the forging functions above: the same bytes with a valid view are accepted.
    data = _state_dict_pickle({"w": _tensor("0", 6, 0, (2, 3), (3, 1))})
    raw = np.arange(6, dtype="<f4").tobytes()
    state = load_torch_state_dict(_zip_checkpoint(tmp_path / "ok.pth", data, {"0": raw}))
    np.testing.assert_array_equal(state["w"], np.arange(6, dtype=np.float32).reshape(2, 3))


# --- hostile or broken files ---------------------------------------------------------------------


def test_refuses_a_pickle_that_runs_code_in_zip_layout(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weight": _Payload(marker)}, protocol=2)
    path = _zip_checkpoint(tmp_path / "evil.pth", payload, {})

    with pytest.raises(UnsafeCheckpointError, match=r"io\.open"):
        load_torch_state_dict(path)
    assert not marker.exists()


def test_refuses_a_pickle_that_runs_code_in_legacy_layout(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    header = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
    header += pickle.dumps({"little_endian": True}, protocol=2)
    path = tmp_path / "evil.pth"
    path.write_bytes(header + pickle.dumps(_Payload(marker), protocol=2))

    with pytest.raises(UnsafeCheckpointError, match="only needs tensors"):
        load_torch_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("os", "system"),
        ("builtins", "eval"),
        ("torch", "load"),
        ("torch._utils", "_rebuild_parameter"),
    ],
)
def test_refuses_every_global_outside_the_allow_list(
    tmp_path: Path, module: str, name: str
) -> None:
    data = b"\x80\x02" + _global(module, name) + _str("echo hi") + b"\x85R."
    with pytest.raises(UnsafeCheckpointError, match=f"{module}.{name}"):
        load_torch_state_dict(_zip_checkpoint(tmp_path / "evil.pth", data, {}))


def test_refuses_a_view_past_the_end_of_its_storage(tmp_path: Path) -> None:
    # 2x3 floats declared over a 4-element storage would read memory past the buffer.
    data = _state_dict_pickle({"w": _tensor("0", 4, 0, (2, 3), (3, 1))})
    path = _zip_checkpoint(tmp_path / "oob.pth", data, {"0": np.zeros(4, "<f4").tobytes()})
    with pytest.raises(CheckpointFormatError, match="past the end"):
        load_torch_state_dict(path)


def test_refuses_a_storage_of_the_wrong_size(tmp_path: Path) -> None:
    data = _state_dict_pickle({"w": _tensor("0", 6, 0, (6,), (1,))})
    path = _zip_checkpoint(tmp_path / "short.pth", data, {"0": b"\x00" * 8})
    with pytest.raises(CheckpointFormatError, match="wrong byte size"):
        load_torch_state_dict(path)


def test_bfloat16_gets_an_explanation(tmp_path: Path) -> None:
    data = _state_dict_pickle({"w": _tensor("0", 2, 0, (2,), (1,), storage="BFloat16Storage")})
    path = _zip_checkpoint(tmp_path / "bf16.pth", data, {"0": b"\x00" * 4})
    with pytest.raises(CheckpointFormatError, match="bfloat16"):
        load_torch_state_dict(path)


def test_a_file_that_is_no_checkpoint_is_named(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_bytes(b"these are not the weights you are looking for")
    with pytest.raises(CheckpointFormatError, match=str(path.name)):
        load_torch_state_dict(path)


def test_a_pickle_that_is_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    pickle.dump([1, 2, 3], buffer, protocol=2)
    with pytest.raises(CheckpointFormatError, match="state dict"):
        load_torch_state_dict(_zip_checkpoint(tmp_path / "list.pth", buffer.getvalue(), {}))
