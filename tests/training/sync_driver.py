"""One process of tests/training/test_distributed.py's gradient-sync check (torchrun, 2 processes, gloo):
a gradient present in one process is averaged with 0 from the other; one present in none stays None."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from tm_distill.training.distributed import Replicated

accelerator = Accelerator(cpu=True)
rank = accelerator.process_index
both, one, none = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
both.grad = torch.full((3,), float(rank + 1))  # 1 and 2: mean 1.5
if rank == 1:
    one.grad = torch.full((3,), 4.0)  # 4 and (missing) 0: mean 2
Replicated(None, accelerator).sync_gradients([both, one, none])
assert torch.equal(both.grad, torch.full((3,), 1.5)), both.grad
assert torch.equal(one.grad, torch.full((3,), 2.0)), one.grad
assert none.grad is None
print(f"rank {rank}: gradients synced")
