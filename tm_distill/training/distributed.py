"""How one stage's student is spread over the processes of a run: replicated (one process, or DDP) or
fully sharded (FSDP2).

``accelerate launch`` starts the processes and accelerate's ``Accelerator`` gives each its rank and device;
this module decides what a process holds and how gradients meet:

- ``Replicated`` (``distributed.strategy: ddp``, and every one-process run): each process holds the whole
  student; after the backward passes the trainable gradients are averaged across processes in one flat
  all-reduce (DDP's arithmetic, without its module wrapper: the stages call the student's parts directly).
- ``FullyShardedStage`` (``distributed.strategy: fsdp``): torch's ``fully_shard`` (FSDP2) shards the
  student's parameters, gradients and AdamW state over the processes. The stages do not call
  ``student(...)``: the logits stage calls ``student.model`` and hands ``lm_head.weight`` to a fused loss, the
  layer-parallel stages call the mixers' methods. FSDP's gathers run in hooks around a module's
  ``forward``, so the root unit is ``LossRoot``, a module whose forward *is* ``stage.loss``: everything
  outside the layer units (embeddings, final norm, LM head) is gathered for the whole loss and its gradients
  are reduce-scattered after the backward. Stages that run the student's layers through their forward
  (``Stage.shard_layers``: logits) also get one unit per decoder layer, so only one layer is whole at a time.
  This is why ``fully_shard`` is applied here rather than through ``accelerator.prepare``, whose FSDP plugin
  wraps a model that is called as ``model(...)``.

Checkpoints are consolidated: every process gathers the weights (``gathered``) and the main process writes
a plain HF folder that ``AutoModelForCausalLM`` loads; the optimizer state is saved whole, keyed by
parameter name, so ``--resume`` re-shards it over however many processes the resumed run has. At the end of
a stage the sharded student is rebuilt as a plain module (``finish``) for the next stage and the final save.

The frozen teacher is replicated, or with ``distributed.teacher: shard`` each of its decoder layers becomes
an FSDP unit (its embeddings and LM head stay whole: the fused loss reads ``lm_head.weight``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from ..models.tensors import attribute_state

log = logging.getLogger(__name__)


class LossRoot(torch.nn.Module):
    """FSDP's root unit: holds the student and runs ``stage.loss`` as its forward."""

    def __init__(self, stage):
        super().__init__()
        self.student = stage.student
        self._loss = stage.loss  # a bound method, not a submodule: the teacher stays outside this tree

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None):
        return self._loss(input_ids) if position_ids is None else self._loss(input_ids, position_ids)


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor  # noqa: PLC0415

    return t.to_local() if isinstance(t, DTensor) else t


def _full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor  # noqa: PLC0415

    return t.full_tensor() if isinstance(t, DTensor) else t


class Replicated:
    """Every process holds the whole student (one process, or DDP). ``stage``: the Stage being trained."""

    optimizer_keys = "ids"  # how optimizer_state() keys the AdamW state (torch's parameter ids)

    def __init__(self, stage, accelerator):
        self.stage, self.accelerator = stage, accelerator

    def loss(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None):
        if position_ids is None:
            return self.stage.loss(input_ids)
        return self.stage.loss(input_ids, position_ids)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for _, p in self.stage.trainable_parameters()]

    def sync_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Average the gradients over the processes in one flat all-reduce.

        A parameter with a gradient in some processes counts 0 in the others (as a micro-batch without it does
        under grad_accum); one with a gradient in none keeps none, so AdamW skips it as one process would.
        """
        if self.accelerator.num_processes == 1:
            return
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors  # noqa: PLC0415

        device = params[0].device if params else self.accelerator.device
        mine = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
        anywhere = self.accelerator.reduce(mine, reduction="sum").tolist()
        reduced = [p for p, n in zip(params, anywhere) if n > 0]
        for p in reduced:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if not reduced:
            return
        grads = [p.grad for p in reduced]
        flat = self.accelerator.reduce(_flatten_dense_tensors(grads), reduction="mean")
        for grad, avg in zip(grads, _unflatten_dense_tensors(flat, grads)):
            grad.copy_(avg)

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """The student's weights whole in this process for the block (already so when replicated)."""
        yield

    def local_parameters(self) -> list[tuple[str, torch.Tensor]]:
        return list(self.stage.student.named_parameters())

    def export_state(self) -> dict[str, torch.Tensor] | None:
        """The weights a checkpoint saves (LoRA folded in), or None for the student's own."""
        export = getattr(self.stage, "export_state_dict", None)
        return export() if export else None

    def optimizer_state(self, optimizer) -> dict:
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)

    def finish(self) -> None:
        """End of stage: ``stage.finalize()`` (e.g. merge LoRA); ``stage.student`` is the plain result."""
        self.stage.finalize()


class FullyShardedStage(Replicated):
    """The student fully sharded with FSDP2 for one stage (see the module docstring).

    reshard_after_forward: free each layer's gathered weights after its forward (FSDP's ZeRO-3 default;
    False keeps them for the backward: more memory, one all-gather fewer per layer).
    """

    optimizer_keys = "names"  # parameter names: a resumed run re-shards the state over its own processes

    def __init__(self, stage, accelerator, reshard_after_forward: bool = True):
        """``stage.trainable_parameters()`` must have set requires_grad already (``loop.prepare_stage`` does)."""
        from torch.distributed.fsdp import fully_shard  # noqa: PLC0415

        super().__init__(stage, accelerator)
        mesh = _mesh(accelerator)
        self.root = LossRoot(stage)
        if stage.shard_layers:
            for layer in stage.student.model.layers:
                fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward)
        fully_shard(self.root, mesh=mesh, reshard_after_forward=reshard_after_forward)

    def loss(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None):
        return self.root(input_ids, position_ids)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.root.parameters() if p.requires_grad]  # the sharded (DTensor) parameters

    def sync_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Nothing to do: FSDP reduce-scattered the gradients during the backward."""

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """Every unit's weights whole in every process for the block (a collective: all processes enter)."""
        from torch.distributed.fsdp import FSDPModule  # noqa: PLC0415

        units = [m for m in self.root.modules() if isinstance(m, FSDPModule)]
        for unit in units:
            unit.unshard()
        try:
            yield
        finally:
            for unit in reversed(units):
                unit.reshard()

    def local_parameters(self) -> list[tuple[str, torch.Tensor]]:
        return [(n, _local(p)) for n, p in self.stage.student.named_parameters()]

    def export_state(self) -> dict[str, torch.Tensor]:
        """Call inside ``gathered()``: the whole weights, read from the modules (``attribute_state``)."""
        return super().export_state() or attribute_state(self.stage.student)

    def optimizer_state(self, optimizer) -> dict:
        """The whole AdamW state keyed by parameter name, on the CPU (a collective)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict  # noqa: PLC0415

        return get_optimizer_state_dict(self.root, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict  # noqa: PLC0415

        set_optimizer_state_dict(self.root, optimizer, state, options=StateDictOptions(full_state_dict=True))

    def finish(self) -> None:
        """Finalize with the weights gathered, then rebuild ``stage.student`` as a plain (unsharded) module."""
        with self.gathered():
            self.stage.finalize()
            student = self.stage.student
            state = {k: v.clone() for k, v in attribute_state(student).items()}  # tie_weights re-ties them
            trainable = {n for n, p in student.named_parameters() if p.requires_grad}
        self.stage.student = rebuild(student, state, trainable, self.accelerator.device)
        self.root = None


def rebuild(student: torch.nn.Module, state: dict[str, torch.Tensor], trainable: set[str], device) -> torch.nn.Module:
    """A fresh, unsharded module of ``student``'s class and config holding ``state`` (plain key names)."""
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(device):  # its random init must not move the RNG
        plain = type(student)(student.config)
    plain.load_state_dict(state, strict=True, assign=True)
    if hasattr(plain, "tie_weights"):
        plain.tie_weights()
    for name, param in plain.named_parameters():
        param.requires_grad_(name in trainable)
    return plain.train(student.training)


def _mesh(accelerator):
    """One flat device mesh over every process of the run."""
    from torch.distributed.device_mesh import init_device_mesh  # noqa: PLC0415

    return init_device_mesh(accelerator.device.type, (accelerator.num_processes,))


def shard_teacher(teacher: torch.nn.Module, accelerator) -> None:
    """Make each of the frozen teacher's decoder layers an FSDP unit (``distributed.teacher: shard``)."""
    from torch.distributed.fsdp import fully_shard  # noqa: PLC0415

    mesh = _mesh(accelerator)
    for layer in teacher.model.layers:
        fully_shard(layer, mesh=mesh)
    log.info("teacher: %d decoder layers sharded over %d processes", len(teacher.model.layers),
             accelerator.num_processes)


def parallel_for(stage, accelerator, cfg) -> Replicated:
    """The placement of ``stage``'s student for a run's ``distributed`` config (``recipe.DistributedConfig``)."""
    if cfg.strategy == "fsdp" and accelerator.num_processes > 1:
        return FullyShardedStage(stage, accelerator, reshard_after_forward=cfg.reshard_after_forward)
    return Replicated(stage, accelerator)


def total_norm(params: list[torch.nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """The gradients' global L2 norm (clipped to ``max_norm`` first when given); sharded gradients included."""
    if max_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    return _full(norm)


__all__ = ["FullyShardedStage", "LossRoot", "Replicated", "parallel_for", "rebuild", "shard_teacher", "total_norm"]
