"""Wire format: one message = a fixed `struct` header, the tensor shape, then raw tensor bytes.

Layout (network byte order, no padding)::

    offset  size  field
    0       2     magic b"SP"
    2       1     version (WIRE_VERSION)
    3       1     kind (Kind)
    4       4     iteration (u32)
    8       4     microbatch (u32)
    12      2     sender node id (u16)
    14      1     dtype code (DType)
    15      1     ndim (<= MAX_NDIM)
    16      32    tags: NUM_TAGS x i64, free for the runtime (hop index, chunk index, ...)
    48      8     payload length in bytes (u64)
    56      8*ndim shape, one u64 per dimension
    ...           payload: prod(shape) * itemsize raw bytes (C order, little-endian as in memory)

`encode(msg)` returns the whole message as one buffer; `decode(buf)` validates every field and
raises `WireError` naming what is wrong. CONTROL messages carry a UTF-8 JSON object (never pickle).
The tensor bytes are those of the host (little-endian on every platform we run on).
"""

from __future__ import annotations

import enum
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import SkipPipeError

MAGIC = b"SP"
WIRE_VERSION = 1
MAX_NDIM = 8  # tensors we ship have at most a handful of dimensions
NUM_TAGS = 4  # generic integer tags per message, for the runtime to use as it likes
_U16_MAX = 2**16 - 1  # sender field width
_U32_MAX = 2**32 - 1  # iteration / microbatch field width
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1  # tag field width

_FIXED = struct.Struct(f"!2sBBIIHBB{NUM_TAGS}qQ")
_DIM = struct.Struct("!Q")
HEADER_MIN_BYTES = _FIXED.size  # smallest valid message (ndim 0, empty payload)


class WireError(SkipPipeError):
    """A buffer or message that does not follow the wire format."""


class Kind(enum.IntEnum):
    """What a message carries."""

    FORWARD = 1  # activations of one microbatch along its path
    BACKWARD = 2  # gradients of one microbatch, reverse path
    DONE = 3  # a data node finished its microbatches of an iteration
    HEARTBEAT = 4  # liveness
    AVERAGE = 5  # a chunk of gradients for averaging inside a stage
    WEIGHTS = 6  # stage state for a rejoining node
    CONTROL = 7  # small UTF-8 JSON object


@dataclass(frozen=True)
class _DTypeInfo:
    itemsize: int  # bytes per element
    numpy: str | None  # numpy dtype name, None where numpy has none (bfloat16)
    torch: str  # torch dtype attribute name


class DType(enum.IntEnum):
    """Element types of payloads. BYTES is raw uint8 (also used for JSON bodies)."""

    BYTES = 0
    FLOAT32 = 1
    FLOAT16 = 2
    BFLOAT16 = 3
    INT64 = 4
    INT32 = 5
    FLOAT64 = 6
    INT8 = 7
    BOOL = 8

    @property
    def info(self) -> _DTypeInfo:
        return _DTYPES[self]


_DTYPES = {
    DType.BYTES: _DTypeInfo(1, "uint8", "uint8"),
    DType.FLOAT32: _DTypeInfo(4, "float32", "float32"),
    DType.FLOAT16: _DTypeInfo(2, "float16", "float16"),
    DType.BFLOAT16: _DTypeInfo(2, None, "bfloat16"),
    DType.INT64: _DTypeInfo(8, "int64", "int64"),
    DType.INT32: _DTypeInfo(4, "int32", "int32"),
    DType.FLOAT64: _DTypeInfo(8, "float64", "float64"),
    DType.INT8: _DTypeInfo(1, "int8", "int8"),
    DType.BOOL: _DTypeInfo(1, "bool", "bool"),
}
_BY_NUMPY = {info.numpy: code for code, info in _DTYPES.items() if info.numpy}
_BY_TORCH = {info.torch: code for code, info in _DTYPES.items()}


@dataclass(frozen=True)
class Message:
    """One wire message. `payload` holds `prod(shape) * dtype.itemsize` bytes.

    Use `from_tensor`, `from_json` or the plain constructor (empty payload for signals such as
    HEARTBEAT). `tags` is padded with zeros to NUM_TAGS entries.
    """

    kind: Kind
    sender: int  # node id of the sending node
    iteration: int = 0
    microbatch: int = 0
    tags: tuple[int, ...] = ()
    dtype: DType = DType.BYTES
    shape: tuple[int, ...] = (0,)
    payload: bytes | memoryview = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _enum(Kind, self.kind, "kind"))
        object.__setattr__(self, "dtype", _enum(DType, self.dtype, "dtype"))
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        tags = tuple(int(t) for t in self.tags)
        if len(tags) > NUM_TAGS:
            raise WireError(f"at most {NUM_TAGS} tags, got {len(tags)}")
        object.__setattr__(self, "tags", tags + (0,) * (NUM_TAGS - len(tags)))
        _check_range("sender", self.sender, 0, _U16_MAX)
        _check_range("iteration", self.iteration, 0, _U32_MAX)
        _check_range("microbatch", self.microbatch, 0, _U32_MAX)
        for t in self.tags:
            _check_range("tag", t, _I64_MIN, _I64_MAX)
        _check_shape(self.shape, self.dtype, memoryview(self.payload).nbytes)

    @property
    def nbytes(self) -> int:
        """Encoded size in bytes (header + shape + payload)."""
        return _FIXED.size + _DIM.size * len(self.shape) + memoryview(self.payload).nbytes

    @classmethod
    def from_tensor(
        cls,
        kind: Kind,
        sender: int,
        tensor: Any,
        *,
        iteration: int = 0,
        microbatch: int = 0,
        tags: tuple[int, ...] = (),
        copy: bool = True,
    ) -> Message:
        """Wrap a numpy array or torch tensor (any device). With copy=False the payload views
        the tensor's memory (C-contiguous CPU tensors only); do not modify it before sending."""
        dtype, shape, raw = _tensor_bytes(tensor, copy)
        return cls(kind, sender, iteration, microbatch, tags, dtype, shape, raw)

    @classmethod
    def from_json(
        cls,
        kind: Kind,
        sender: int,
        body: dict,
        *,
        iteration: int = 0,
        microbatch: int = 0,
        tags: tuple[int, ...] = (),
    ) -> Message:
        """A message whose payload is a UTF-8 JSON object (CONTROL, DONE, ...)."""
        if not isinstance(body, dict):
            raise WireError(f"JSON body must be an object, got {type(body).__name__}")
        raw = json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
        return cls(kind, sender, iteration, microbatch, tags, DType.BYTES, (len(raw),), raw)

    def json(self) -> dict:
        """Parse the payload as a UTF-8 JSON object; WireError if it is not one."""
        return _parse_json(self.payload)

    def to_numpy(self) -> np.ndarray:
        """Read-only numpy view of the payload (no copy). bfloat16 has no numpy type: use
        `to_torch`."""
        name = self.dtype.info.numpy
        if name is None:
            raise WireError(f"{self.dtype.name} has no numpy dtype; use to_torch()")
        return np.frombuffer(self.payload, dtype=np.dtype(name)).reshape(self.shape)

    def to_torch(self, device: Any = "cpu") -> Any:
        """A new, writable torch tensor holding a copy of the payload."""
        import torch  # slow to import: only where tensors are used

        out = torch.empty(self.shape, dtype=getattr(torch, self.dtype.info.torch))
        if out.numel():
            out.view(-1).view(torch.uint8).numpy()[:] = np.frombuffer(self.payload, np.uint8)
        return out.to(device)


def _enum(enum_cls, value, name: str):
    try:
        return enum_cls(value)
    except ValueError:
        raise WireError(f"unknown {name} {value!r}") from None


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise WireError(f"{name} must be an int in [{low}, {high}], got {value!r}")


def _check_shape(shape: tuple[int, ...], dtype: DType, payload_bytes: int) -> None:
    if len(shape) > MAX_NDIM:
        raise WireError(f"ndim {len(shape)} exceeds {MAX_NDIM}")
    if any(d < 0 for d in shape):
        raise WireError(f"negative dimension in shape {shape}")
    expected = math.prod(shape) * dtype.info.itemsize
    if expected != payload_bytes:
        raise WireError(f"shape {shape} of {dtype.name} needs {expected} bytes, payload has {payload_bytes}")


def _tensor_bytes(tensor: Any, copy: bool) -> tuple[DType, tuple[int, ...], bytes | memoryview]:
    if isinstance(tensor, np.ndarray):
        code = _BY_NUMPY.get(tensor.dtype.name)
        array = np.ascontiguousarray(tensor.astype(tensor.dtype.newbyteorder("="), copy=False))
    else:  # torch tensor: reinterpret as bytes so bfloat16 works without a numpy dtype
        code = _BY_TORCH.get(str(tensor.dtype).removeprefix("torch."))
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        array = flat.view(_torch_uint8()).numpy() if flat.numel() else np.empty(0, np.uint8)
        array = array.reshape(-1)
    if code is None:
        raise WireError(f"unsupported tensor dtype {tensor.dtype}")
    shape = tuple(int(d) for d in tensor.shape)
    raw = array.tobytes() if copy else memoryview(array).cast("B")
    return DType(code), shape, raw


def _torch_uint8():
    import torch

    return torch.uint8


def _parse_json(payload: bytes | memoryview) -> dict:
    try:
        body = json.loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise WireError(f"payload is not UTF-8 JSON: {e}") from None
    if not isinstance(body, dict):
        raise WireError(f"JSON body must be an object, got {type(body).__name__}")
    return body


def encode_parts(msg: Message) -> tuple[bytes, memoryview]:
    """Header (fixed part + shape) and payload, for writers that join them with a prefix."""
    payload = memoryview(msg.payload).cast("B")
    fixed = _FIXED.pack(
        MAGIC,
        WIRE_VERSION,
        msg.kind,
        msg.iteration,
        msg.microbatch,
        msg.sender,
        msg.dtype,
        len(msg.shape),
        *msg.tags,
        payload.nbytes,
    )
    dims = b"".join(_DIM.pack(d) for d in msg.shape)
    return fixed + dims, payload


def encode(msg: Message) -> bytes:
    """The whole message as one buffer."""
    header, payload = encode_parts(msg)
    return b"".join((header, payload))


def decode(buf: bytes | bytearray | memoryview) -> Message:
    """Parse and validate one message. The payload is a zero-copy view of `buf`.

    Raises WireError for a short buffer, bad magic or version, unknown kind or dtype, too many
    dimensions, a payload length that differs from the buffer or from the shape, or a CONTROL
    body that is not a JSON object.
    """
    view = memoryview(buf).cast("B").toreadonly()
    if view.nbytes < _FIXED.size:
        raise WireError(f"truncated header: {view.nbytes} bytes < {_FIXED.size}")
    magic, version, kind, iteration, microbatch, sender, dtype, ndim, *rest = _FIXED.unpack_from(view)
    tags, payload_len = tuple(rest[:NUM_TAGS]), rest[NUM_TAGS]
    if magic != MAGIC:
        raise WireError(f"bad magic {bytes(magic)!r} (expected {MAGIC!r})")
    if version != WIRE_VERSION:
        raise WireError(f"unsupported wire version {version} (expected {WIRE_VERSION})")
    kind, dtype = _enum(Kind, kind, "kind"), _enum(DType, dtype, "dtype")
    if ndim > MAX_NDIM:
        raise WireError(f"ndim {ndim} exceeds {MAX_NDIM}")
    header_len = _FIXED.size + _DIM.size * ndim
    if view.nbytes < header_len:
        raise WireError(f"truncated shape: {view.nbytes} bytes < {header_len}")
    shape = tuple(_DIM.unpack_from(view, _FIXED.size + _DIM.size * i)[0] for i in range(ndim))
    if payload_len != view.nbytes - header_len:
        raise WireError(
            f"payload length field {payload_len} differs from the {view.nbytes - header_len} bytes received"
        )
    msg = Message(kind, sender, iteration, microbatch, tags, dtype, shape, view[header_len:])
    if kind is Kind.CONTROL:
        _check_control(msg)
    return msg


def _check_control(msg: Message) -> None:
    if msg.dtype is not DType.BYTES:
        raise WireError(f"CONTROL payload must be BYTES, got {msg.dtype.name}")
    _parse_json(msg.payload)
