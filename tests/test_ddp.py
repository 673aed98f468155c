"Two gloo processes under torchrun end where one process trained on the combined batches ends."
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

COVERS = ("04_distributed", "05_train")  # the notebooks these tests cover: `make test NB=...` runs them

sys.path.insert(0, str(Path(__file__).parent/"jobs"))
import ddp_job  # noqa: E402

from mlkit.data import ResumableSampler  # noqa: E402
from mlkit.runs import list_runs  # noqa: E402


def reference_weights(accum=1):
    "One process, SGD on the union of what rank 0 and rank 1 see at each step (`accum` batches of each, with accumulation)."
    ds, net = ddp_job.dataset(), ddp_job.model()
    opt = torch.optim.SGD(net.parameters(), lr=ddp_job.LR)
    shards = [ResumableSampler(ddp_job.N, rank=r, world_size=2, seed=ddp_job.SEED) for r in range(2)]
    for epoch in range(ddp_job.EPOCHS):
        orders = []
        for s in shards:
            s.set_epoch(epoch); orders.append(list(s))
        for i in range(0, len(orders[0]), ddp_job.BATCH * accum):
            idx = orders[0][i:i + ddp_job.BATCH * accum] + orders[1][i:i + ddp_job.BATCH * accum]
            x, y = ds[idx]
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    return net.state_dict()


@pytest.mark.parametrize("accum", [1, 2])  # 2: DDP skips the all-reduce (no_sync) on all but a window's last batch
def test_two_processes_match_one_on_combined_batches(tmp_path, accum):
    env = {**os.environ, "MLKIT_PROGRESS": "lines", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(Path(ddp_job.__file__)), str(tmp_path), str(accum)], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    got = torch.load(tmp_path/"final.pt", weights_only=True)
    for k, v in reference_weights(accum).items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6)

    # the ranks share one stdout, so their lines may interleave mid-line: search the text, not lines
    assert len(re.findall(r"epoch 2/2 +train_loss \S+ +valid_loss", r.stdout)) == 1, r.stdout  # only rank 0 reports
    losses = dict(re.findall(r"rank (\d) valid_loss (\S+) world 2 model Sequential", r.stdout))  # unwrapped after fit
    assert losses.keys() == {"0", "1"} and losses["0"] == losses["1"]  # validation reduced over both shards
    per_epoch = ddp_job.N // 2 // ddp_job.BATCH // accum
    assert sorted(p.name for p in (tmp_path/"ckpt").iterdir()) == [f"step-{per_epoch:08d}.pt", f"step-{2 * per_epoch:08d}.pt"]


def test_a_checkpoint_that_keeps_the_best_does_not_hang_two_processes(tmp_path):
    "Checkpoint(monitor=...) saves each epoch and links best.pt: every rank gathers as often (rank 1 once waited forever)."
    env = {**os.environ, "MLKIT_PROGRESS": "lines", "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(Path(ddp_job.__file__)), str(tmp_path), "1", "valid_loss"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try: out, _ = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # torchrun and both ranks: none is left waiting on the other
        p.communicate()
        pytest.fail("the two ranks hung (a collective one of them never joined)")
    assert p.returncode == 0, out
    assert (tmp_path/"ckpt"/"best.pt").is_file() and (tmp_path/"final.pt").is_file()


def test_only_rank_zero_records_and_losses_are_means_over_ranks(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(Path(ddp_job.__file__).with_name("ddp_track_job.py")), str(tmp_path)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    [run] = list_runs(tmp_path/"runs")  # no empty run from rank 1
    assert run.status == "finished" and run.params["trainer"]["world_size"] == 2
    seen = [json.loads((tmp_path/f"losses-{rank}.json").read_text()) for rank in (0, 1)]
    per_step = {}
    for rank_seen in seen:
        for step, loss, n in rank_seen: per_step.setdefault(step, []).append((loss, n))
    expected = [(s, sum(v * n for v, n in ws) / sum(n for _, n in ws)) for s, ws in sorted(per_step.items())]
    got = [(s, v) for s, _, v in run.metrics["train_loss_step"]]
    assert [s for s, _ in got] == [s for s, _ in expected]
    torch.testing.assert_close([v for _, v in got], [v for _, v in expected], rtol=0, atol=1e-6)
    assert seen[0] != seen[1]  # the ranks saw different data: rank 0's losses alone would not pass
    epochs = [[(v, n) for s, v, n in rank_seen if (s - 1) // 4 == e] for rank_seen in seen for e in (0, 1)]
    train_loss = [sum(v * n for v, n in epochs[e] + epochs[2 + e]) / sum(n for _, n in epochs[e] + epochs[2 + e])
                  for e in (0, 1)]
    torch.testing.assert_close([v for _, _, v in run.metrics["train_loss"]], train_loss, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_each_rank_resumes_with_its_own_random_state(tmp_path):
    "Ranks whose random states differ (dropout seeded by rank), stopped after an epoch and resumed: as if never stopped."
    def torchrun(out, *args):
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            str(Path(ddp_job.__file__).with_name("ddp_resume_job.py")), str(out), *args],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stdout + r.stderr
    torchrun(tmp_path/"whole", "2")
    torchrun(tmp_path/"split", "1")
    torchrun(tmp_path/"split", "2", "--resume")
    whole, split = (torch.load(tmp_path/d/"final.pt", weights_only=True) for d in ("whole", "split"))
    for k in whole: assert torch.equal(whole[k], split[k]), k


def test_checkpoint_state_on_rank_zero_alone_does_not_hang(tmp_path):
    "The usual pattern, `if is_main_process(): save(trainer.checkpoint_state())`, must not wait for the other ranks."
    job = tmp_path/"one_rank_save.py"
    job.write_text("import torch, torch.distributed as dist\nfrom torch import nn\nfrom torch.utils.data import DataLoader, "
                   "TensorDataset\nfrom mlkit.distributed import is_main_process\nfrom mlkit.train import Trainer\n"
                   "ds = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))\n"
                   "t = Trainer(nn.Linear(4, 2), DataLoader(ds, batch_size=8), progress=False, seed=1)\nt.fit(1)\n"
                   "if is_main_process(): torch.save(t.checkpoint_state(epoch_done=True), 'ck.pt')\n"
                   "dist.barrier()\nprint(f'done {dist.get_rank()}', flush=True)\nimport os; os._exit(0)\n")  # one write a line
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(job)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and "done 0" in r.stdout and "done 1" in r.stdout, r.stdout + r.stderr


@pytest.mark.covers("04_distributed")  # the notebook whose example it runs
def test_the_distributed_notebook_s_worked_example_runs_under_torchrun_as_it_says(tmp_path):
    "The script shown in nbs/04_distributed.ipynb, taken from the notebook as it is, run by torchrun in 2 processes."
    from mlkit.checkpoint import latest_checkpoint, load_checkpoint
    cells = json.loads((Path(__file__).parents[1]/"nbs"/"04_distributed.ipynb").read_text())["cells"]
    [source] = ["".join(c["source"]) for c in cells if "".join(c["source"]).startswith("#| eval: false\n# train_ddp.py")]
    script = tmp_path/"train_ddp.py"
    script.write_text(source)
    out = tmp_path/"out"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
                        str(out)], capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    losses = dict(re.findall(r"rank (\d) of 2: valid_loss (\S+)", r.stdout))  # the ranks share stdout: by pattern
    assert losses.keys() == {"0", "1"} and losses["0"] == losses["1"], r.stdout  # reduced over both shards
    [run] = list_runs(out/"runs")  # rank 0's record, and none from rank 1
    assert (run.name, run.status, run.params["width"], run.params["trainer"]["world_size"]) == ("ddp-example", "finished", 32, 2)
    assert len(run.metrics["valid_loss"]) == 2
    ckpt = load_checkpoint(latest_checkpoint(out/"checkpoints"))  # 512 samples, 2 ranks, batches of 32: 8 steps an epoch
    assert ckpt["step"] == 16 and len(ckpt["rng_ranks"]) == 2  # each rank's random states, gathered into rank 0's file
    model = torch.load(out/"model.pt", weights_only=True)
    assert all(torch.equal(model[k], ckpt["model"][k]) for k in model)
