"""Two ranks with random states of their own (dropout), stopped after EPOCHS and resumed: `torchrun ... OUT EPOCHS [--resume]`.

Each rank seeds its generator differently, as runs that seed by rank do; rank 0 writes OUT/final.pt at the end.
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

if __name__ == "__main__":
    out, epochs, resume = Path(sys.argv[1]), int(sys.argv[2]), "--resume" in sys.argv
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(128, 8, generator=g), torch.randint(0, 3, (128,), generator=g))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
    torch.manual_seed(100 + dist_env().rank)  # each rank's dropout masks are its own
    trainer = Trainer(model, DataLoader(ds, batch_size=16, shuffle=True), opt_fn=torch.optim.SGD, lr=0.1, seed=7,
                      cbs=[Checkpoint(out/"ckpt")], progress=False)
    trainer.fit(epochs, resume="latest" if resume else None)
    if dist_env().is_main: torch.save(trainer.module.state_dict(), out/"final.pt")
    dist.barrier()
    dist.destroy_process_group()
