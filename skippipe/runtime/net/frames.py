"""A transport's limits and timeouts (TransportConfig), and the largest frame a node of a run
can be sent: the transport's `max_frame_bytes`.

A length prefix above it closes the connection before anything is allocated (connection.py),
so a peer cannot make a node reserve memory it will never need. The bound comes from the run's
scenario and the node's own stage: activations and their gradients (FORWARD/BACKWARD), the
stage's flat gradients (AVERAGE) and its weights with both AdamW moments (WEIGHTS, for a
rejoining stage peer); control messages are far smaller than CONTROL_BYTES.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...scenario import ModelConfig
from .wire import HEADER_MIN_BYTES, MAX_NDIM

if TYPE_CHECKING:
    import torch

MIB = 1024**2

WIRE_FLOAT_BYTES = 4  # tensors leave a node as float32 (compute.py, averaging.py)
STATE_VECTORS = 3  # WEIGHTS: weights, AdamW exp_avg and exp_avg_sq (compute.state_vector)
CONTROL_BYTES = 1024**2  # JSON bodies (control, DONE, measurement requests) stay far below
HEADER_MAX_BYTES = HEADER_MIN_BYTES + 8 * MAX_NDIM  # fixed header + the longest shape


def frame_limit(payload_bytes: int) -> int:
    """Largest frame whose payload is at most `payload_bytes` (or a control message)."""
    return HEADER_MAX_BYTES + max(payload_bytes, CONTROL_BYTES)


def training_frame_limit(model: ModelConfig, samples: int, stage_params: int) -> int:
    """Largest frame a training or inference node of a stage with `stage_params` parameters
    receives, for the `model` it really runs (the scenario's or a stand-in) and `samples`
    sequences per microbatch."""
    element = max(WIRE_FLOAT_BYTES, model.activation_dtype_bytes)
    activations = samples * model.ctx_tokens * model.d_model * element
    state = STATE_VECTORS * stage_params * WIRE_FLOAT_BYTES
    return frame_limit(max(activations, state))


@dataclass(frozen=True)
class TransportConfig:
    """Limits and timeouts of one transport (seconds, bytes)."""

    send_timeout_s: float = 10.0  # default deadline of one send: lookup + connect + write + drain
    handshake_timeout_s: float = 3.0  # a connection must authenticate within this, or is closed
    connect_backoff_s: float = 0.02  # first pause between connection attempts; doubles
    connect_backoff_max_s: float = 0.5  # longest pause between connection attempts
    max_frame_bytes: int = 256 * MIB  # larger length prefixes close the connection; nodes pass
    # the largest message their run can send (frames.py)
    max_unauthenticated: int = 256  # inbound connections still authenticating (64 KiB each, at
    # most); more are closed at once
    stop_timeout_s: float = 2.0  # stop() waits this long for connection tasks to end

    @classmethod
    def for_stage(cls, model: ModelConfig, samples: int, module: torch.nn.Module) -> TransportConfig:
        """Limits of a node running `module` (a stage of `model`, `samples` per microbatch)."""
        params = sum(p.numel() for p in module.parameters())
        return cls(max_frame_bytes=training_frame_limit(model, samples, params))
