"""Training throughput per model size: tokens per CPU-second of one process on one thread.

The study's budget is CPU time, so the measure is the process's CPU time (`time.process_time`),
not wall time: on a shared machine wall time counts other jobs, CPU time mostly does not. One
torch thread, so the figure is per core. A size is (d_model, layers, context, samples per
microbatch); layers are split over the scenario's stages and `path_length` of them are run.

    python -m skippipe.study --measure 64x12x128x4,96x12x128x4 --measure-iterations 20
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

MEASURE_WARMUP = 3  # iterations run before the clock starts (allocator, first-call costs)


@dataclass(frozen=True)
class Size:
    d_model: int
    n_layers: int
    ctx_tokens: int
    samples: int  # sequences per microbatch

    @classmethod
    def parse(cls, text: str) -> Size:
        """`DxLxTxB`, e.g. 64x12x128x4."""
        from ..errors import SkipPipeError

        try:
            d, layers, ctx, samples = (int(x) for x in text.lower().split("x"))
        except ValueError:
            raise SkipPipeError(f"--measure {text!r}: expected DxLxTxB, e.g. 64x12x128x4") from None
        if min(d, layers, ctx, samples) < 1 or d % 32:
            raise SkipPipeError(f"--measure {text!r}: sizes must be positive, d a multiple of 32")
        return cls(d, layers, ctx, samples)

    def label(self) -> str:
        return f"{self.d_model}x{self.n_layers}x{self.ctx_tokens}x{self.samples}"


def model_for(base, size: Size):
    """The scenario's model at another size: head width 32, SwiGLU 8/3 d rounded up to 16."""
    ffn = 16 * math.ceil(8 * size.d_model / 3 / 16)
    return replace(
        base,
        d_model=size.d_model,
        n_heads=size.d_model // 32,
        n_layers=size.n_layers,
        ffn_hidden=ffn,
        ctx_tokens=size.ctx_tokens,
    )


def parameters(model) -> int:
    return model.n_layers * model.layer_params() + model.head_params()


def measure(scenario, size: Size, path_length: int, iterations: int, seed: int = 0) -> dict:
    """Tokens per CPU-second training `size` on random tokens along paths of `path_length`
    stages (one microbatch per step, as many steps as `iterations`)."""
    import torch

    from ..train.local import train_iteration
    from ..train.model import build_stages
    from ..train.optim import make_optimizer
    from ..train.recipe import recipe_config

    torch.set_num_threads(1)
    model = model_for(scenario.model, size)
    n_stages = scenario.pipeline.n_stages
    if model.n_layers % n_stages:
        from ..errors import SkipPipeError

        raise SkipPipeError(
            f"--measure {size.label()}: {model.n_layers} layers do not split over {n_stages} stages"
        )
    stages = build_stages(model, n_stages, seed, "cpu")
    cfg = recipe_config(scenario, iterations=iterations, seed=seed)
    optimizer = make_optimizer(stages, cfg)
    generator = torch.Generator().manual_seed(seed)
    shape = (size.samples, size.ctx_tokens + 1)
    batches = iter(lambda: torch.randint(0, model.vocab_size, shape, generator=generator), None)
    path = (tuple(range(path_length)),)
    for _ in range(MEASURE_WARMUP):
        train_iteration(stages, optimizer, path, batches, cfg.grad_clip)
    start = time.process_time()
    for _ in range(iterations):
        train_iteration(stages, optimizer, path, batches, cfg.grad_clip)
    cpu = time.process_time() - start
    tokens = iterations * size.samples * size.ctx_tokens
    return {
        "size": size.label(),
        "parameters": parameters(model),
        "path_length": path_length,
        "tokens": tokens,
        "cpu_s": cpu,
        "tokens_per_cpu_s": tokens / cpu,
    }
