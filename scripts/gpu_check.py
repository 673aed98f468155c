"""Check mlkit's GPU utilities and the Trainer on a real CUDA GPU; print one table (`make gpu-check`).

Rows: the GPUs `gpus()` reports; the precision `auto_precision` picks; a small transformer's training throughput
with the Trainer and with a hand-written loop, in fp32 and in the auto precision (samples/s, and TFLOP/s and MFU
from `throughput`); the batch size `find_batch_size` finds; `gpu_lock` and CUDA_VISIBLE_DEVICES in a child process.
Without a CUDA GPU it stops with a message (exit 2); `--allow-cpu` runs the same checks on the CPU, as a dry run.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mlkit.gpu import auto_precision, autocast_dtype, find_batch_size, gpus, pick_device, throughput
from mlkit.train import Trainer


class TinyTransformer(nn.Module):
    "Sequence classification: embedding, a few encoder layers, mean pooling."
    def __init__(self, vocab=1000, d=256, layers=4, classes=10):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 4, 4 * d, batch_first=True, dropout=0.0), layers)
        self.head = nn.Linear(d, classes)
    def forward(self, x): return self.head(self.enc(self.emb(x)).mean(1))


class Batches(Dataset):
    "Whole synthetic batches already on the device, so that the loop, not data loading, is measured."
    def __init__(self, n, batch, seq, device):
        g = torch.Generator(device="cpu").manual_seed(0)
        self.x = torch.randint(0, 1000, (n, batch, seq), generator=g).to(device)
        self.y = torch.randint(0, 10, (n, batch), generator=g).to(device)
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return self.x[i], self.y[i]


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize(device)


def raw_samples_per_s(model, dl, precision, device):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = autocast_dtype(precision)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    sync(device); t0 = time.perf_counter(); n = 0
    for x, y in dl:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        if scaler: scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
        else: loss.backward(); opt.step()
        n += len(y)
    sync(device)
    return n / (time.perf_counter() - t0)


def trainer_samples_per_s(model, dl, precision, device):
    t = Trainer(model, dl, opt_fn=torch.optim.AdamW, lr=1e-4, precision=precision, device=device, progress=False)
    sync(device); t0 = time.perf_counter(); t.fit(1); sync(device)
    return len(dl) * len(dl.dataset.y[0]) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no CUDA GPU (a dry run)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu-check: no CUDA GPU visible here; run it on a GPU machine (or --allow-cpu for a dry run)", file=sys.stderr)
        return 2
    rows = []
    found = gpus()
    for g in found:
        rows.append((f"gpus()[{g.index}]", f"{g.name}, {g.total_memory / 2**30:.0f} GiB ({g.free_memory / 2**30:.0f} free), "
                     f"cc {g.capability}, bf16 {g.bf16}, util {g.utilization}%, {len(g.processes)} procs"))
    if not found: rows.append(("gpus()", "none"))
    device = pick_device()
    auto = auto_precision(device)
    rows.append(("pick_device / auto_precision", f"{device} / {auto}"))

    on_gpu = device.type == "cuda"
    batch, seq, n = (64, 256, 40) if on_gpu else (8, 32, 6)
    dl = DataLoader(Batches(n, batch, seq, device), batch_size=None, shuffle=False)
    for precision in dict.fromkeys(["fp32", auto]):
        raw, trn = [], []
        for _ in range(args.rounds):  # interleaved
            torch.manual_seed(0); raw.append(raw_samples_per_s(TinyTransformer().to(device), dl, precision, device))
            torch.manual_seed(0); trn.append(trainer_samples_per_s(TinyTransformer().to(device), dl, precision, device))
        r, t = statistics.median(raw), statistics.median(trn)
        tp = throughput(TinyTransformer().to(device), dl.dataset[0], steps=10, precision=precision)
        mfu = f"{tp.mfu:.1%}" if tp.mfu is not None else "n/a"
        rows.append((f"train {precision}", f"raw loop {r:,.0f} samples/s | Trainer {t:,.0f} samples/s ({t / r:.3f}x) | "
                     f"{tp.tflops:.1f} TFLOP/s, MFU {mfu}, peak mem {tp.peak_memory / 2**30:.2f} GiB"))
    if on_gpu:
        cap = 4096
        bs = find_batch_size(TinyTransformer().to(device), dl.dataset[0], max_size=cap)
        rows.append(("find_batch_size", f"{bs} (seq {seq}, {auto}, capped at {cap})"))

    env = {**os.environ, "MLKIT_LOCK_DIR": tempfile.mkdtemp()}
    if not on_gpu: env["MLKIT_FAKE_GPUS"] = "2"
    child = ("import os, torch\n"
             "print('visible', os.environ['CUDA_VISIBLE_DEVICES'], 'devices', torch.cuda.device_count(),\n"
             "      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')")
    code = f"import subprocess, sys\nfrom mlkit.gpu import gpu_lock\nwith gpu_lock(1) as ids:\n" \
           f"    print('locked', ids, flush=True)\n    subprocess.run([sys.executable, '-c', {child!r}])\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    rows.append(("gpu_lock(1) + CUDA_VISIBLE_DEVICES", (out.stdout or out.stderr).strip().replace("\n", " ")))

    width = max(len(k) for k, _ in rows)
    print(f"mlkit gpu-check  (torch {torch.__version__}, CUDA {torch.version.cuda})")
    for k, v in rows: print(f"{k.ljust(width)}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
