"""Read PyTorch and safetensors checkpoints into numpy arrays, without torch.

A `.pth` file is a pickle, and unpickling runs whatever callables the file names. The loader
here therefore uses a restricted unpickler that resolves only the few globals a plain state
dict needs (an ordered dict, the tensor rebuild function, the storage classes), refuses every
other one, and builds numpy arrays itself from the raw storage bytes. Both layouts torch has
written are read:

- the zip layout (torch >= 1.6): `<archive>/data.pkl` plus one raw file per storage under
  `<archive>/data/<key>` and the byte order in `<archive>/byteorder`;
- the legacy layout: five pickles back to back (magic number, protocol version, system info,
  the object, the storage keys), then each storage as an int64 element count and raw bytes.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "CheckpointFormatError",
    "UnsafeCheckpointError",
    "load_safetensors",
    "load_torch_state_dict",
]

Array = npt.NDArray[Any]

# The first pickle of a legacy file is this number (torch.serialization.MAGIC_NUMBER).
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001

# Storage class name -> element type. bfloat16 has no numpy twin, so it is refused below.
_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "DoubleStorage": np.dtype("f8"),
    "FloatStorage": np.dtype("f4"),
    "HalfStorage": np.dtype("f2"),
    "LongStorage": np.dtype("i8"),
    "IntStorage": np.dtype("i4"),
    "ShortStorage": np.dtype("i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint's pickle names something a state dict does not need; it was not run."""


class CheckpointFormatError(ValueError):
    """The file is not a PyTorch state dict this reader understands, or it is damaged."""


@dataclass(frozen=True, slots=True)
class _StorageType:
    """Stand-in for a `torch.*Storage` class: only its element type matters here."""

    name: str
    dtype: np.dtype[Any]


@dataclass(frozen=True, slots=True)
class _StorageRef:
    """A storage named by the pickle; its bytes are read after unpickling."""

    key: str
    dtype: np.dtype[Any]
    numel: int


@dataclass(frozen=True, slots=True)
class _TensorRef:
    """A tensor view (offset, shape, strides in elements) into a storage."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> _TensorRef:
    """Replace `torch._utils._rebuild_tensor_v2`: record the view, validate its arguments."""
    del requires_grad, backward_hooks, metadata  # training state, meaningless for inference
    if not isinstance(storage, _StorageRef):
        raise CheckpointFormatError("a tensor in the checkpoint does not point to a storage")
    if not (
        _is_int(storage_offset)
        and isinstance(size, tuple)
        and isinstance(stride, tuple)
        and len(size) == len(stride)
        and all(_is_int(v) for v in (*size, *stride))
    ):
        raise CheckpointFormatError("a tensor in the checkpoint has a malformed shape or stride")
    assert isinstance(storage_offset, int)
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `_ALLOWED_GLOBALS` and turns storages into references."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            if module == "torch" and name == "BFloat16Storage":
                raise CheckpointFormatError(
                    "the checkpoint holds bfloat16 tensors, which numpy cannot represent; "
                    "convert it to float32 or float16 with torch first"
                )
            raise UnsafeCheckpointError(
                f"refusing to load {module}.{name}: a state dict checkpoint only needs "
                "tensors and an ordered dict, so this file may run code; load it only if "
                "you trust its origin, with torch itself"
            )
        return allowed

    def persistent_load(self, pid: Any) -> _StorageRef:
        # ('storage', storage_type, key, location, numel[, view_metadata (legacy only)])
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise CheckpointFormatError(f"unsupported persistent id in checkpoint: {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if len(pid) == 6 and pid[5] is not None:
            raise CheckpointFormatError("storage views of the pre-1.0 torch format are unsupported")
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str):
            raise CheckpointFormatError(f"malformed storage reference in checkpoint: {pid!r}")
        if not _is_int(numel) or numel < 0:
            raise CheckpointFormatError(f"malformed storage size in checkpoint: {pid!r}")
        ref = self.storages.get(key)
        if ref is None:
            ref = _StorageRef(key, storage_type.dtype, numel)
            self.storages[key] = ref
        elif ref.dtype != storage_type.dtype or ref.numel != numel:
            raise CheckpointFormatError(f"storage {key!r} is declared twice with different types")
        return ref


def load_torch_state_dict(path: Path) -> dict[str, Array]:
    """Load a PyTorch state dict (`torch.save(model.state_dict())`) as numpy arrays.

    Raises `UnsafeCheckpointError` when the pickle names anything but tensors and ordered dicts,
    and `CheckpointFormatError` when the file is not a readable state dict.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return _load_zip(archive, path)
        with path.open("rb") as file:
            return _load_legacy(file, path)
    except (UnsafeCheckpointError, CheckpointFormatError):
        raise
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError, zipfile.BadZipFile) as exc:
        raise CheckpointFormatError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc


def _load_zip(archive: zipfile.ZipFile, path: Path) -> dict[str, Array]:
    pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise CheckpointFormatError(f"{path} is a zip file but not a PyTorch checkpoint")
    root = pickles[0].removesuffix("data.pkl")
    byteorder = "little"
    if f"{root}byteorder" in archive.namelist():
        byteorder = archive.read(f"{root}byteorder").decode("ascii").strip()
    unpickler = _StateDictUnpickler(io.BytesIO(archive.read(pickles[0])))
    tree = unpickler.load()

    def read_storage(ref: _StorageRef) -> bytes:
        return archive.read(f"{root}data/{ref.key}")

    return _materialize(tree, unpickler.storages, read_storage, byteorder, path)


def _load_legacy(file: IO[bytes], path: Path) -> dict[str, Array]:
    # The header pickles hold only ints, bools, strings and dicts; the same unpickler
    # reads them so nothing else can sneak in there either.
    magic = _StateDictUnpickler(file).load()
    if magic != _LEGACY_MAGIC_NUMBER:
        raise CheckpointFormatError(f"{path} is neither a zip nor a legacy PyTorch checkpoint")
    protocol = _StateDictUnpickler(file).load()
    if protocol != _LEGACY_PROTOCOL_VERSION:
        raise CheckpointFormatError(f"{path} uses unsupported legacy protocol {protocol!r}")
    sys_info = _StateDictUnpickler(file).load()
    little_endian = isinstance(sys_info, dict) and sys_info.get("little_endian", True)
    unpickler = _StateDictUnpickler(file)
    tree = unpickler.load()
    keys = _StateDictUnpickler(file).load()
    if not (isinstance(keys, list) and all(isinstance(key, str) for key in keys)):
        raise CheckpointFormatError(f"{path} has a malformed storage key list")

    # Storages follow in the order of `keys`, each as <int64 numel><raw bytes>.
    raw: dict[str, bytes] = {}
    for key in keys:
        ref = unpickler.storages.get(key)
        if ref is None:
            raise CheckpointFormatError(f"{path} stores data for unknown storage {key!r}")
        (numel,) = struct.unpack("<q" if little_endian else ">q", _read_exact(file, 8))
        if numel != ref.numel:
            raise CheckpointFormatError(
                f"{path}: storage {key!r} has {numel} elements on disk, {ref.numel} declared"
            )
        raw[key] = _read_exact(file, numel * ref.dtype.itemsize)

    def read_storage(ref: _StorageRef) -> bytes:
        return raw[ref.key]

    return _materialize(
        tree, unpickler.storages, read_storage, "little" if little_endian else "big", path
    )


def _read_exact(file: IO[bytes], size: int) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise CheckpointFormatError("the checkpoint ends in the middle of a storage")
    return data


def _materialize(
    tree: object,
    storages: Mapping[str, _StorageRef],
    read_storage: Callable[[_StorageRef], bytes],
    byteorder: str,
    path: Path,
) -> dict[str, Array]:
    if not isinstance(tree, dict) or not all(isinstance(key, str) for key in tree):
        raise CheckpointFormatError(f"{path} does not hold a state dict (a mapping of tensors)")
    if byteorder not in ("little", "big"):
        raise CheckpointFormatError(f"{path} declares unknown byte order {byteorder!r}")
    order: Literal["<", ">"] = "<" if byteorder == "little" else ">"

    arrays: dict[str, Array] = {}
    for ref in storages.values():
        data = read_storage(ref)
        if len(data) != ref.numel * ref.dtype.itemsize:
            raise CheckpointFormatError(f"{path}: storage {ref.key!r} has the wrong byte size")
        arrays[ref.key] = np.frombuffer(data, dtype=ref.dtype.newbyteorder(order))

    state: dict[str, Array] = {}
    for name, value in tree.items():
        if not isinstance(value, _TensorRef):
            raise CheckpointFormatError(f"{path}: entry {name!r} is not a tensor")
        state[name] = _view(arrays[value.storage.key], value, name)
    return state


def _view(storage: Array, tensor: _TensorRef, name: str) -> Array:
    """Copy the strided view out of its storage, after checking it stays inside it."""
    if any(dim < 0 for dim in tensor.shape) or any(step < 0 for step in tensor.strides):
        raise CheckpointFormatError(f"tensor {name!r} has a negative size or stride")
    if tensor.offset < 0:
        raise CheckpointFormatError(f"tensor {name!r} has a negative storage offset")
    dtype = storage.dtype.newbyteorder("=")
    if 0 in tensor.shape:
        return np.zeros(tensor.shape, dtype=dtype)
    last = tensor.offset + sum(
        (dim - 1) * step for dim, step in zip(tensor.shape, tensor.strides, strict=True)
    )
    if last >= storage.size:
        raise CheckpointFormatError(f"tensor {name!r} reaches past the end of its storage")
    view = np.lib.stride_tricks.as_strided(
        storage[tensor.offset :],
        shape=tensor.shape,
        strides=tuple(step * storage.itemsize for step in tensor.strides),
        writeable=False,
    )
    # np.array, not ascontiguousarray: the latter turns 0-d tensors into 1-d arrays.
    return np.array(view, dtype=dtype, order="C", copy=True)


def load_safetensors(path: Path) -> dict[str, Array]:
    """Load a `.safetensors` file as numpy arrays (the format holds no code, only tensors)."""
    from safetensors.numpy import load_file

    try:
        loaded: dict[str, Array] = load_file(str(path))
    except Exception as exc:  # safetensors raises its own untyped errors
        raise CheckpointFormatError(f"{path} is not a readable safetensors file: {exc}") from exc
    return loaded
