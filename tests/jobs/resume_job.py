"""A small training run that can kill itself with SIGKILL at a given step, or in the middle of a checkpoint save.

usage: resume_job.py OUT CKPT_DIR [--kill-at STEP] [--kill-event after_step|after_batch|after_epoch] [--kill-in-save STEP]
                     [--kill-mid-write STEP] [--loader shuffle|generator|weighted|workers] [--resume]
                     [--track RUNS_DIR]
Writes OUT/final.pt (weights) and OUT/history.json when training finishes. With --track, a LocalTracker run named
"resumable" under RUNS_DIR records it through TrackingCallback (flushed just before a kill, so that the run holds
steps past the checkpoint that the resumed fit must not duplicate).
"""
import argparse
import json
import os
import random
import signal
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mlkit.checkpoint
from mlkit.callbacks import Checkpoint
from mlkit.core import seed_everything
from mlkit.track import LocalTracker, TrackingCallback
from mlkit.train import Callback, Trainer, one_cycle

ap = argparse.ArgumentParser()
ap.add_argument("out"); ap.add_argument("ckpt_dir")
ap.add_argument("--kill-at", type=int); ap.add_argument("--kill-event", default="after_step")
ap.add_argument("--kill-in-save", type=int); ap.add_argument("--resume", action="store_true")
ap.add_argument("--kill-mid-write", type=int)
ap.add_argument("--loader", default="shuffle", choices=["shuffle", "generator", "weighted", "workers"])
ap.add_argument("--track")
args = ap.parse_args()


run = LocalTracker(args.track, name="resumable", capture=False) if args.track else None


def die():
    if run is not None: run.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class Killer(Callback):
    order = 100  # after Checkpoint (50): with after_batch the step's checkpoint is already written
    def after_step(self):
        if args.kill_event == "after_step" and self.trainer.step == args.kill_at: die()
    def after_batch(self):
        if args.kill_event == "after_batch" and self.trainer.training and self.trainer.step == args.kill_at: die()
    def after_epoch(self):  # after the epoch-end checkpoint
        if args.kill_event == "after_epoch" and self.trainer.step == args.kill_at: die()


class Jitter(Callback):
    "Scales each training loss by draws from NumPy and Python's random: a resume that lost either state ends elsewhere."
    def after_loss(self):
        if self.trainer.training: self.trainer.loss = self.trainer.loss * (1 + 0.01 * (np.random.rand() + random.random()))


if args.kill_in_save is not None:  # die after the temporary file is written, before it is renamed into place
    real_replace = os.replace
    def replace_then_die(src, dst):
        if Path(dst).name == mlkit.checkpoint.checkpoint_name(args.kill_in_save): die()
        real_replace(src, dst)
    os.replace = replace_then_die  # atomic_write renames with os.replace

if args.kill_mid_write is not None:  # die halfway through writing that step's checkpoint, wherever it is written
    import io
    real_save = torch.save
    def half_then_die(obj, f, *a, **kw):
        if not (isinstance(obj, dict) and obj.get("step") == args.kill_mid_write): return real_save(obj, f, *a, **kw)
        buf = io.BytesIO()
        real_save(obj, buf, *a, **kw)
        out = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
        out.write(buf.getvalue()[:len(buf.getvalue()) // 2]); out.flush(); os.fsync(out.fileno())
        die()
    torch.save = half_then_die

seed_everything(0)
g = torch.Generator().manual_seed(0)
y = torch.randint(0, 3, (512,), generator=g)
x = torch.randn(512, 16, generator=g) + y[:, None].float()
train = TensorDataset(x[:384], y[:384]); valid = TensorDataset(x[384:], y[384:])


class Augmented(torch.utils.data.Dataset):
    "Random noise on every item: the dataset draws from the random state of the process that loads it."
    def __len__(self): return len(train)
    def __getitem__(self, i): return train[i][0] + 0.1 * torch.randn(16), train[i][1]


loaders = {  # the setups users have: shuffle, their own generator, a sampler mlkit cannot rebuild, workers
    "shuffle": lambda: DataLoader(train, batch_size=24, shuffle=True),
    "generator": lambda: DataLoader(train, batch_size=24, shuffle=True, generator=torch.Generator().manual_seed(5)),
    "weighted": lambda: DataLoader(train, batch_size=24, sampler=torch.utils.data.WeightedRandomSampler(
        torch.linspace(0.5, 1.5, len(train)), num_samples=len(train))),
    "workers": lambda: DataLoader(Augmented(), batch_size=24, shuffle=True, num_workers=2),
}
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
trainer = Trainer(model, loaders[args.loader](), DataLoader(valid, batch_size=50),
                  metrics={"accuracy": lambda p, t: (p.argmax(-1) == t).float().mean()},
                  lr=3e-3, grad_accum=2, scheduler=one_cycle(), progress=False,
                  cbs=[Checkpoint(args.ckpt_dir, every_n_steps=2, keep_last=2), Killer(), Jitter(),
                       *([TrackingCallback(run)] if run is not None else [])])
trainer.fit(3, resume="latest" if args.resume else None)
if run is not None: run.finish()
out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
torch.save(trainer.module.state_dict(), out/"final.pt")
(out/"history.json").write_text(json.dumps(trainer.history))
