"""Wire format: round trips for every dtype and kind, and WireError on malformed buffers."""

import struct

import numpy as np
import pytest
import torch

from skippipe.runtime.net.wire import (
    HEADER_MIN_BYTES,
    MAGIC,
    MAX_NDIM,
    NUM_TAGS,
    WIRE_VERSION,
    DType,
    Kind,
    Message,
    WireError,
    decode,
    encode,
)

TORCH_DTYPES = {
    DType.FLOAT32: torch.float32,
    DType.FLOAT16: torch.float16,
    DType.BFLOAT16: torch.bfloat16,
    DType.INT64: torch.int64,
    DType.INT32: torch.int32,
    DType.FLOAT64: torch.float64,
    DType.INT8: torch.int8,
    DType.BOOL: torch.bool,
    DType.BYTES: torch.uint8,
}


def _tensor(dtype: torch.dtype, shape=(2, 3, 4)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(shape, generator=gen) * 50
    return values > 0 if dtype is torch.bool else values.to(dtype)


@pytest.mark.parametrize("code", list(TORCH_DTYPES))
def test_torch_round_trip_every_dtype(code):
    tensor = _tensor(TORCH_DTYPES[code])
    msg = Message.from_tensor(Kind.FORWARD, 3, tensor, iteration=7, microbatch=11, tags=(1, -2))
    out = decode(encode(msg))
    assert out == msg
    assert out.dtype is code and out.shape == (2, 3, 4) and out.tags == (1, -2, 0, 0)
    back = out.to_torch()
    assert back.dtype == tensor.dtype and torch.equal(back, tensor)
    back.zero_()  # an owned, writable copy
    assert not torch.equal(tensor, back) or not tensor.any()


@pytest.mark.parametrize("name", ["float32", "float16", "int64", "int32", "float64", "int8", "uint8", "bool"])
def test_numpy_round_trip(name):
    array = (np.arange(24).reshape(4, 6) % 5).astype(name)
    out = decode(encode(Message.from_tensor(Kind.BACKWARD, 1, array)))
    np.testing.assert_array_equal(out.to_numpy(), array)


def test_numpy_big_endian_input_is_sent_native():
    array = np.arange(6, dtype=">f4")
    np.testing.assert_array_equal(
        decode(encode(Message.from_tensor(Kind.FORWARD, 0, array))).to_numpy(), array
    )


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_round_trips(kind):
    if kind is Kind.CONTROL:
        msg = Message.from_json(kind, 65535, {"event": "rejoin", "stage": 2}, iteration=2**32 - 1)
        assert decode(encode(msg)).json() == {"event": "rejoin", "stage": 2}
    else:
        msg = Message.from_tensor(kind, 0, np.ones((3,), np.float32), tags=(2**63 - 1,) * NUM_TAGS)
    assert decode(encode(msg)) == msg


def test_signal_scalar_and_empty_tensors():
    for msg in (
        Message(Kind.HEARTBEAT, 4),
        Message.from_tensor(Kind.AVERAGE, 1, torch.tensor(2.5)),
        Message.from_tensor(Kind.WEIGHTS, 1, torch.zeros(0, 5)),
    ):
        buf = encode(msg)
        assert len(buf) == msg.nbytes and decode(buf) == msg
    assert Message.from_tensor(Kind.AVERAGE, 1, torch.tensor(2.5)).to_torch().item() == 2.5


def test_zero_copy_option_views_the_tensor():
    array = np.arange(4, dtype=np.float32)
    msg = Message.from_tensor(Kind.FORWARD, 0, array, copy=False)
    array[0] = 9
    assert decode(encode(msg)).to_numpy()[0] == 9


def test_bfloat16_has_no_numpy_view():
    msg = Message.from_tensor(Kind.FORWARD, 0, torch.ones(2, dtype=torch.bfloat16))
    with pytest.raises(WireError, match="to_torch"):
        msg.to_numpy()


# ---- malformed input ------------------------------------------------------------------------


def _valid() -> bytes:
    return encode(Message.from_tensor(Kind.FORWARD, 2, np.arange(6, dtype=np.float32).reshape(2, 3)))


def _patch(buf: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(buf)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize(
    "buf, match",
    [
        (b"", "truncated header"),
        (_valid()[: HEADER_MIN_BYTES - 1], "truncated header"),
        (b"XX" + _valid()[2:], "bad magic"),
        (_patch(_valid(), 2, "!B", WIRE_VERSION + 1), "version"),
        (_patch(_valid(), 3, "!B", 200), "unknown kind"),
        (_patch(_valid(), 14, "!B", 99), "unknown dtype"),
        (_patch(_valid(), 15, "!B", MAX_NDIM + 1), "ndim"),
        (_patch(_valid(), 15, "!B", 5), "truncated shape|payload length"),
        (_valid()[:-1], "payload length"),
        (_valid() + b"\0", "payload length"),
        (_patch(_valid(), HEADER_MIN_BYTES, "!Q", 3), "needs 36 bytes"),
    ],
)
def test_malformed_buffers_raise_wire_error(buf, match):
    with pytest.raises(WireError, match=match):
        decode(buf)


def test_control_body_must_be_a_json_object():
    raw = b"\xff not json"
    bad = Message(Kind.CONTROL, 1, dtype=DType.BYTES, shape=(len(raw),), payload=raw)
    with pytest.raises(WireError, match="JSON"):
        decode(encode(bad))
    listed = Message(Kind.CONTROL, 1, shape=(2,), payload=b"[]")
    with pytest.raises(WireError, match="object"):
        decode(encode(listed))
    floats = Message.from_tensor(Kind.CONTROL, 1, np.zeros(1, np.float32))
    with pytest.raises(WireError, match="BYTES"):
        decode(encode(floats))


def test_decode_never_unpickles():
    import pickle

    with pytest.raises(WireError):
        decode(pickle.dumps({"a": 1}))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sender": 2**16}, "sender"),
        ({"sender": -1}, "sender"),
        ({"iteration": -1}, "iteration"),
        ({"tags": (0,) * (NUM_TAGS + 1)}, "tags"),
        ({"shape": (3,), "payload": b"ab"}, "needs 3 bytes"),
        ({"kind": 42}, "unknown kind"),
    ],
)
def test_invalid_messages_are_refused(kwargs, match):
    base = {"kind": Kind.HEARTBEAT, "sender": 0}
    with pytest.raises(WireError, match=match):
        Message(**{**base, **kwargs})


def test_header_starts_with_magic():
    assert _valid()[:2] == MAGIC


def test_the_frame_limit_covers_every_message_of_a_run(tiny_scenario):
    from skippipe.runtime.net.frames import CONTROL_BYTES, frame_limit, training_frame_limit
    from skippipe.train.model import build_stage

    model, samples = tiny_scenario.model, tiny_scenario.pipeline.samples_per_microbatch
    stage = build_stage(model, 0, tiny_scenario.pipeline.n_stages, "cpu", 0)
    params = sum(p.numel() for p in stage.parameters())
    limit = training_frame_limit(model, samples, params)
    activations = torch.zeros(samples, model.ctx_tokens, model.d_model)
    weights = torch.zeros(3 * params)  # weights and both AdamW moments (WEIGHTS)
    for tensor in (activations, weights):
        assert Message.from_tensor(Kind.FORWARD, 0, tensor).nbytes <= limit
    assert limit < 2**31  # a forged 2 GiB header is refused
    control = Message.from_json(Kind.CONTROL, 0, {"x": "y" * (CONTROL_BYTES - 16)})
    assert control.nbytes <= frame_limit(0)
