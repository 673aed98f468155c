"""Data-parallel training under torchrun: `torchrun --nproc_per_node 2 ddp_job.py OUT [GRAD_ACCUM [MONITOR]]`.

Rank 0 writes OUT/final.pt; progress lines go to stdout (rank 0 only).
"""
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mlkit.callbacks import Checkpoint
from mlkit.distributed import dist_env
from mlkit.train import Trainer

N, BATCH, EPOCHS, SEED, LR = 256, 16, 2, 123, 0.1


def dataset():
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(N, 8, generator=g), torch.randint(0, 3, (N,), generator=g))


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 3))


if __name__ == "__main__":
    out, accum = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1
    monitor = sys.argv[3] if len(sys.argv) > 3 else None  # best.pt by this metric, as the digits notebook keeps it
    trainer = Trainer(model(), DataLoader(dataset(), batch_size=BATCH, shuffle=True), DataLoader(dataset(), batch_size=50),
                      opt_fn=torch.optim.SGD, lr=LR, seed=SEED, grad_accum=accum, cbs=[Checkpoint(out/"ckpt", monitor=monitor)])
    trainer.fit(EPOCHS)
    # after fit the DDP wrapper is gone (freed while the process group lives): trainer.model is the module again
    print(f"rank {dist_env().rank} valid_loss {trainer.metrics['valid_loss']:.6f} world {dist.get_world_size()} "
          f"model {type(trainer.model).__name__}")
    if dist_env().is_main: torch.save(trainer.module.state_dict(), out/"final.pt")
    dist.destroy_process_group()
