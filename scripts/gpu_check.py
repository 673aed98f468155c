"""Check mlkit's GPU utilities and the Trainer on a real CUDA GPU; print one table (`make gpu-check`).

Rows: the GPUs `gpus()` reports; the precision `auto_precision` picks; a small transformer's training throughput
with the Trainer and with a hand-written loop, in fp32 and in the auto precision (samples/s, and TFLOP/s and MFU
from `throughput`); the batch size `find_batch_size` finds; `gpu_lock` and CUDA_VISIBLE_DEVICES in a child process.
Without a CUDA GPU it stops with a message (exit 2); `--allow-cpu` runs the same checks on the CPU, as a dry run.

It fails (exit 1, the failed rows marked FAIL) when: the auto precision is not bf16 on compute capability 8.0 or
newer; the Trainer trains below 0.95x the hand-written loop in the same precision (on a GPU); `gpu_lock` does not
point the child's CUDA_VISIBLE_DEVICES at the GPU it locked; `find_batch_size` fails; or, with two GPUs or more, a
2-process NCCL data-parallel step under torchrun fails.
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


DDP_STEP = """import torch, torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from mlkit.train import Trainer
ds = TensorDataset(torch.randn(256, 32), torch.randint(0, 4, (256,)))
t = Trainer(nn.Linear(32, 4), DataLoader(ds, batch_size=32, shuffle=True), DataLoader(ds, batch_size=64), progress=False)
t.fit(1)
w = t.module.weight.detach().clone()
dist.all_reduce(w, op=dist.ReduceOp.MAX); same = torch.equal(w, t.module.weight.detach())
print(f"rank {dist.get_rank()} backend {dist.get_backend()} valid_loss {t.metrics['valid_loss']:.4f} same_weights {same}",
      flush=True)
dist.barrier(); dist.destroy_process_group()
import os; os._exit(0)  # past the process group's teardown, which can abort a process that has done its work
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no CUDA GPU (a dry run)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu-check: no CUDA GPU visible here; run it on a GPU machine (or --allow-cpu for a dry run)", file=sys.stderr)
        return 2
    rows, failed = [], []
    def check(name, ok, text):
        rows.append((name, text if ok else f"FAIL  {text}"))
        if not ok: failed.append(name)
    found = gpus()
    for g in found:
        rows.append((f"gpus()[{g.index}]", f"{g.name}, {g.total_memory / 2**30:.0f} GiB ({g.free_memory / 2**30:.0f} free), "
                     f"cc {g.capability}, bf16 {g.bf16}, util {g.utilization}%, {len(g.processes)} procs"))
    if not found: rows.append(("gpus()", "none"))
    device = pick_device()
    auto = auto_precision(device)
    cap = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    check("pick_device / auto_precision", not (cap and cap >= (8, 0)) or auto == "bf16",
          f"{device} / {auto}" + (f" (compute capability {cap[0]}.{cap[1]})" if cap else ""))

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
        check(f"train {precision}", not on_gpu or t >= 0.95 * r,
              f"raw loop {r:,.0f} samples/s | Trainer {t:,.0f} samples/s "
              f"({t / r:.3f}x{'' if on_gpu else ', not checked on a CPU'})"
              f" | {tp.tflops:.1f} TFLOP/s, MFU {mfu}, peak mem {tp.peak_memory / 2**30:.2f} GiB")
    if on_gpu:
        limit = 4096
        try:
            bs = find_batch_size(TinyTransformer().to(device), dl.dataset[0], max_size=limit)
            check("find_batch_size", bs >= 1, f"{bs} (seq {seq}, {auto}, capped at {limit})")
        except Exception as e: check("find_batch_size", False, f"{type(e).__name__}: {e}")

    env = {**os.environ, "MLKIT_LOCK_DIR": tempfile.mkdtemp()}
    if not on_gpu: env["MLKIT_FAKE_GPUS"] = "2"
    child = ("import os, torch\n"
             "print('visible', os.environ['CUDA_VISIBLE_DEVICES'], 'devices', torch.cuda.device_count(),\n"
             "      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')")
    code = f"import subprocess, sys\nfrom mlkit.gpu import gpu_lock\nwith gpu_lock(1) as ids:\n" \
           f"    print('locked', ids, flush=True)\n    subprocess.run([sys.executable, '-c', {child!r}])\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    words = out.stdout.split()
    locked = words[words.index("locked") + 1].strip("[],") if "locked" in words else None
    seen = words[words.index("visible") + 1] if "visible" in words else None
    check("gpu_lock(1) + CUDA_VISIBLE_DEVICES", out.returncode == 0 and locked is not None and seen == locked,
          (out.stdout or out.stderr).strip().replace("\n", " "))
    if on_gpu and len(found) >= 2:
        ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              "--no-python", sys.executable, "-c", DDP_STEP], capture_output=True, text=True, timeout=300)
        lines = [ln for ln in ddp.stdout.splitlines() if ln.startswith("rank ")]
        check("DDP step, 2 processes (NCCL)", ddp.returncode == 0 and len(lines) == 2 and all(
              "backend nccl" in ln and "same_weights True" in ln for ln in lines), " | ".join(lines) or ddp.stderr[-300:])

    width = max(len(k) for k, _ in rows)
    print(f"mlkit gpu-check  (torch {torch.__version__}, CUDA {torch.version.cuda})")
    for k, v in rows: print(f"{k.ljust(width)}  {v}")
    if failed:
        print(f"gpu-check: {len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
