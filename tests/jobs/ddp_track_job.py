"""Tracked data-parallel training under torchrun: `torchrun --nproc_per_node 2 ddp_track_job.py OUT`.

Every rank opens a LocalTracker under OUT/runs (only rank 0's may record) and writes the losses it computed to
OUT/losses-RANK.json as [optimizer step, loss, samples] per batch.
"""
import json
import sys
from pathlib import Path

import torch.distributed as dist
from torch.utils.data import DataLoader

from mlkit.distributed import dist_env
from mlkit.track import LocalTracker, TrackingCallback
from mlkit.train import Callback, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from ddp_job import BATCH, SEED, dataset, model  # noqa: E402


class BatchLosses(Callback):
    def __init__(self): self.seen = []
    def after_loss(self):
        t = self.trainer
        if t.training: self.seen.append([t.step + 1, t.loss.item(), len(t.yb[0])])


if __name__ == "__main__":
    out = Path(sys.argv[1])
    spy = BatchLosses()
    with LocalTracker(out/"runs", name="ddp", capture=False) as run:
        trainer = Trainer(model(), DataLoader(dataset(), batch_size=BATCH, shuffle=True), seed=SEED, grad_accum=2,
                          progress=False, cbs=[TrackingCallback(run), spy])
        trainer.fit(2)
    (out/f"losses-{dist_env().rank}.json").write_text(json.dumps(spy.seen))
    dist.destroy_process_group()
