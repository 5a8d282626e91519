"""The torch side of one node: its stage's weights and optimizer, and the work of each operation.

A node holds one module per stage chunk it serves: one, or two under DualPipeV's V placement
(placement.py); each operation runs on the chunk of its hop's stage, and the optimizer, the
gradients, the checkpoint and a rejoining peer's state cover every chunk.

Per iteration: a forward runs the stage's layers on the arriving activations (or embeds the
tokens at hop 0) and keeps input and output for its backward; the loss runs the LM head on the
chunk that holds it (stage 0, or the last stage when the variant's loss runs there: model.py),
scores the microbatch's labels, scales the loss by 1 / (microbatches in the iteration) and
starts the backward (with the loss on the last stage every node reads the seeded token stream,
as a classic last stage reads its own data loader, so the labels never travel); a
backward pushes the arriving gradient through the kept output. When the variant splits the
backward (zero-bubble), B computes only the input gradient, from the kept graph which it
retains, so that it can be sent on at once; W later computes the stage's weight gradients from
the same graph and frees it. The loss stays fused. After averaging, the node clips
and takes one AdamW step. A late operation (of an iteration this node already stepped for)
computes input gradients only, so the stepped weights' gradients stay untouched. All of it runs
on the node's single worker thread, in order.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ...errors import SkipPipeError
from ...ops import Op, OpKind
from ...scenario import ModelConfig, Scenario, load_scenario
from ...train.checkpoint import CheckpointInfo, save_checkpoint, save_stage
from ...train.data import prepare_data, training_batches
from ...train.model import build_stage
from ...train.optim import TrainConfig, clip_stage, learning_rate, make_optimizer


def stand_in(model: ModelConfig, settings: str) -> ModelConfig:
    """The model a node really runs: the scenario's, or a stand-in's dimensions with the
    scenario's layer count (so a CPU box can replay a large model's schedule)."""
    if not settings:
        return model
    return dataclasses.replace(load_scenario(settings).model, n_layers=model.n_layers)


class StageCompute:
    def __init__(
        self,
        sc: Scenario,
        model_cfg: ModelConfig,
        stage: int,
        device: torch.device,
        train_cfg: TrainConfig,
        n_microbatches: int,
        split: bool = False,
        stages: tuple[int, ...] = (),
        loss_at: str = "origin",
    ):
        self.model_cfg, self.stage, self.device, self.train_cfg = model_cfg, stage, device, train_cfg
        self.n_microbatches, self.split, self.loss_at = n_microbatches, split, loss_at
        n_stages = sc.pipeline.n_stages
        self.modules = {
            s: build_stage(model_cfg, s, n_stages, device, train_cfg.seed, loss_at)
            for s in stages or (stage,)
        }  # stage -> its chunk
        self.module = self.modules[stage]  # the first chunk: stage 0's embeds and scores
        self.chunks = torch.nn.ModuleList(self.modules.values())  # averaged, sized, rejoined as one
        self.chunk_params = {
            s: [p for p in m.parameters() if p.requires_grad] for s, m in self.modules.items()
        }
        self.params = [p for ps in self.chunk_params.values() for p in ps]
        self.optimizer = make_optimizer(list(self.modules.values()), train_cfg)
        self.late_saved: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.begin_iteration()

    def begin_iteration(self, it: int | None = None) -> None:
        """Fresh per-iteration state; the labels of the iteration before stay for a late loss."""
        self.past_batch = (getattr(self, "batch_it", None), getattr(self, "batch", {}))
        self.batch_it = it
        self.tensors: dict[Op, torch.Tensor] = {}  # operation -> its input
        self.saved: dict[tuple[int, int], tuple[torch.Tensor | None, torch.Tensor]] = {}  # (mb, hop)
        self.out_grads: dict[tuple[int, int], torch.Tensor] = {}  # (mb, hop) -> B's gradient, for W
        self.batch: dict[int, torch.Tensor] = {}  # microbatch -> tokens (inputs; labels for L)
        self.loss_sum, self.loss_count = 0.0, 0

    def give(self, op: Op, tensor: torch.Tensor) -> None:
        self.tensors[op] = tensor.to(self.device)

    def forget(self, mb: int) -> None:
        """Drop a microbatch's inputs and kept activations (it was lost or restarted)."""
        self.tensors = {op: t for op, t in self.tensors.items() if op.microbatch != mb}
        self.saved = {key: v for key, v in self.saved.items() if key[0] != mb}
        self.out_grads = {key: g for key, g in self.out_grads.items() if key[0] != mb}

    def _head(self):
        """The chunk holding the LM head: the loss runs there."""
        held = [m for m in self.modules.values() if m.has_head]
        if not held:
            raise SkipPipeError(f"stage {self.stage} was sent a loss but does not hold the LM head")
        return held[0]

    def _chunk(self, stage: int | None):
        """The module of the stage chunk an op runs on (default: the node's lower stage)."""
        return self.modules[self.stage if stage is None else stage]

    def run(self, op: Op, stage: int | None = None) -> torch.Tensor | None:
        """The torch work of one operation on the chunk of `stage` (default: the first); returns
        the tensor to send on (CPU, contiguous)."""
        mb, hop = op.microbatch, op.hop
        if op.kind is OpKind.L:  # on the chunk holding the head, whatever `stage` says
            return self._loss(op)
        module = self._chunk(stage)
        if op.kind is OpKind.F:
            if hop == 0:
                x, out = None, module.run_layers(module.embed(self.batch[mb][:, :-1]))
            else:
                x = self.tensors.pop(op).requires_grad_(True)
                out = module.run_layers(x)
            self.saved[(mb, hop)] = (x, out)
            return out.detach().cpu()
        if op.kind is OpKind.W:
            return self._weight_grad(mb, hop, module.stage)
        grad = self.tensors.pop(op)
        if self.split:
            return self._input_grad(mb, hop, grad)
        x, out = self.saved.pop((mb, hop))
        out.backward(grad)
        return None if x is None else x.grad.detach().cpu()

    def _loss(self, op: Op) -> torch.Tensor:
        """L: score the microbatch's labels, start its backward; returns the loss gradient."""
        h = self.tensors.pop(op).requires_grad_(True)
        loss = self._head().loss(h, self.batch[op.microbatch][:, 1:])
        (loss / self.n_microbatches).backward()
        self.loss_sum += float(loss.detach())
        self.loss_count += 1
        return h.grad.detach().cpu()

    def _input_grad(self, mb: int, hop: int, grad: torch.Tensor) -> torch.Tensor | None:
        """B of a split backward: the input gradient only; the graph stays for W."""
        x, out = self.saved[(mb, hop)]
        self.out_grads[(mb, hop)] = grad
        if x is None:
            return None  # hop 0: the tokens have no gradient, W does all the work
        (gx,) = torch.autograd.grad(out, x, grad, retain_graph=True)
        return gx.detach().cpu()

    def _weight_grad(self, mb: int, hop: int, stage: int) -> None:
        """W of a split backward: accumulate the chunk's weight gradients and free the graph."""
        _, out = self.saved.pop((mb, hop))
        torch.autograd.backward(out, self.out_grads.pop((mb, hop)), inputs=self.chunk_params[stage])

    def serves(self, op: Op, stage: int) -> bool:
        """Does this node hold what `op` runs on: the head for a loss, else `stage`'s chunk?"""
        if op.kind is OpKind.L:
            return any(m.has_head for m in self.modules.values())
        return stage in self.modules

    def run_late(
        self, it: int, op: Op, tensor: torch.Tensor, stage: int | None = None
    ) -> torch.Tensor | None:
        """A late operation of iteration `it` on the chunk of `stage`: forward with the current
        weights, backward to the input only (a late loss: the gradient of its iteration's labels'
        loss, not counted in the loss this node reported). None when there is nothing to send."""
        key = (it, op.microbatch, op.hop)
        t = tensor.to(self.device)
        if op.kind is OpKind.L:
            return self._late_loss(it, op.microbatch, t)
        if op.kind is OpKind.F:
            x = t.requires_grad_(True)
            out = self._chunk(stage).run_layers(x)
            self.late_saved[key] = (x, out)
            return out.detach().cpu()
        if key not in self.late_saved:
            return None  # its forward ran before this node knew
        x, out = self.late_saved.pop(key)
        (grad,) = torch.autograd.grad(out, x, t)
        return grad.detach().cpu()

    def _late_loss(self, it: int, mb: int, h: torch.Tensor) -> torch.Tensor | None:
        batches = dict([self.past_batch, (self.batch_it, self.batch)])
        tokens = batches.get(it, {}).get(mb)
        if tokens is None:
            return None  # labels of an older iteration: gone
        h.requires_grad_(True)
        (grad,) = torch.autograd.grad(self._head().loss(h, tokens[:, 1:]) / self.n_microbatches, h)
        return grad.detach().cpu()

    def step(self, it: int) -> None:
        for module in self.modules.values():  # as single-process training: stage by stage
            clip_stage(module, self.train_cfg.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(it, self.train_cfg)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def save_gradients(self, path: Path) -> None:
        """Tests: each chunk's summed gradients (stage -> name -> tensor), before clipping and
        the step."""
        path.parent.mkdir(exist_ok=True)
        torch.save(
            {
                s: {k: p.grad.detach().cpu() for k, p in m.named_parameters() if p.grad is not None}
                for s, m in self.modules.items()
            },
            path,
        )

    def save(self, directory: Path, node_id: int, writer: bool, info: CheckpointInfo | None) -> None:
        """The stage under directory/nodes/node-N/; the stage's `writer` also writes
        directory/stage-S.pt and, given `info`, the description, so the directory loads like a
        single-process checkpoint."""
        own = directory / "nodes" / f"node-{node_id}"
        own.mkdir(parents=True, exist_ok=True)
        for module in self.modules.values():
            save_stage(module, own)
            if writer:
                save_stage(module, directory)
        if writer and info is not None:
            save_checkpoint([], directory, dataclasses.replace(info, loss_at=self.loss_at))

    def state_vector(self) -> tuple[torch.Tensor, list[int]]:
        """Weights and AdamW moments as one float32 vector, plus each parameter's step count:
        what a rejoining node needs to continue exactly like its stage peers."""
        params = list(self.chunks.parameters())
        parts, steps = [p.detach().reshape(-1).float().cpu() for p in params], []
        for p in params:
            state = self.optimizer.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                moment = state[key] if key in state else torch.zeros_like(p)
                parts.append(moment.detach().reshape(-1).float().cpu())
            steps.append(int(state["step"]) if "step" in state else 0)
        return torch.cat(parts), steps

    def load_state_vector(self, flat: torch.Tensor, steps: tuple[int, ...]) -> None:
        params = list(self.chunks.parameters())
        offset = 0

        def take(p):
            nonlocal offset
            out = flat[offset : offset + p.numel()].view_as(p).to(device=p.device, dtype=p.dtype).clone()
            offset += p.numel()
            return out

        with torch.no_grad():
            for p in params:
                p.copy_(take(p))
        for p, step in zip(params, steps):
            exp_avg, exp_avg_sq = take(p), take(p)
            if step:
                self.optimizer.state[p] = {
                    "step": torch.tensor(float(step)),
                    "exp_avg": exp_avg,
                    "exp_avg_sq": exp_avg_sq,
                }


def batch_stream(sc: Scenario, model_cfg: ModelConfig, seed: int, n_microbatches: int, first_iteration: int):
    """The data and the token stream of single-process training: iteration i, microbatch g is
    batch i * N + g."""
    data = prepare_data(None, model_cfg.vocab_size)
    stream = training_batches(data.train, sc.pipeline.samples_per_microbatch, model_cfg.ctx_tokens, seed)
    for _ in range(first_iteration * n_microbatches):
        next(stream)
    return data, stream
