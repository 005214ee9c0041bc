"""Faults: kill -9 and resume, NaN and inf, an out-dir that cannot be written, a disk that fills up, torchrun's
gradient against one process's, and a rank that dies. What each one costs is at most the steps since the last
checkpoint, and one line on stderr."""
import glob
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

import guards
import tasks
import train
from common import load_checkpoint
from test_train import ROOT, TINY, assert_one_line_error, log_losses, read_log, run

# The kill test needs steps slow enough to be hit and checkpoints big enough to be caught mid-write: the CPU
# tokenizer (1.3M parameters, a 20 MB checkpoint) on 256 images, a checkpoint every 5 steps.
KILL = ["--task", "tokenizer", "--preset", "cpu", "--num-train", "256", "--batch-size", "16", "--max-steps", "80",
        "--log-every", "5", "--save-every", "5", "--sample-every", "1000"]
KILLS = 10


def start(out, log, resume):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "train.py", *KILL, "--out-dir", out, *(["--resume"] if resume else [])],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def weights(path):
    ck = torch.load(path, weights_only=True)
    return ck["model"], ck["ema"]


def test_kill_9_at_random_moments_then_resume_equals_the_uninterrupted_run(tmp_path):
    ref = str(tmp_path / "ref")
    run("train.py", *KILL, "--out-dir", ref)
    out = str(tmp_path / "out")
    ck = os.path.join(out, "tokenizer.pt")
    rng = random.Random(0)
    kills, mid_write = 0, 0
    for attempt in range(4 * KILLS):
        if kills >= KILLS and mid_write >= 1:
            break
        resume = os.path.exists(ck)
        step_before = load_checkpoint(ck)["step"] if resume else None
        log_path = tmp_path / f"attempt{attempt}.log"
        with open(log_path, "w") as log:
            p = start(out, log, resume)
            if attempt % 3 == 2:  # hunt for a checkpoint write in progress, and kill the writer then
                deadline = time.time() + 120
                while p.poll() is None and time.time() < deadline and not glob.glob(glob.escape(ck) + ".tmp*"):
                    time.sleep(0.0005)
            else:
                time.sleep(rng.uniform(2.0, 9.0))  # anywhere: imports, rendering, a step, a save
            if p.poll() is not None:  # it finished first: nothing was killed
                assert p.returncode == 0, log_path.read_text()[-2000:]
                continue
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        kills += 1
        mid_write += bool(glob.glob(glob.escape(ck) + ".tmp*"))  # the write was cut: its temp file is left behind
        text = log_path.read_text()
        assert "Traceback" not in text, text[-2000:]
        if step_before is not None and "resuming" in text:
            assert f"resuming {ck} at step {step_before}" in text  # it went on from the last complete checkpoint
        if os.path.exists(ck):
            assert load_checkpoint(ck)["step"] % 5 == 0  # the checkpoint on disk is always a whole one
    assert kills >= KILLS and mid_write >= 1, (kills, mid_write)
    print(f"kills survived: {kills}, {mid_write} of them during a checkpoint write")  # shown by pytest -s
    r = run("train.py", *KILL, "--out-dir", out, "--resume")
    assert "unfinished checkpoint write" in r.stdout or not glob.glob(glob.escape(ck) + ".tmp*")
    assert not glob.glob(glob.escape(ck) + ".tmp*")  # the leftovers are cleared
    for a, b in zip(weights(os.path.join(ref, "tokenizer.pt")), weights(ck)):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert log_losses(out) == log_losses(ref)  # and the log holds each step once, as the uninterrupted run's


# -----------------------------------------------------------------------------
# NaN and inf

def assert_ends_with_one_line_error(r, *needles):
    """A run that was training when it stopped: its progress bar is on stderr above, then one error line."""
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(n in last for n in needles), last


def nan_run(monkeypatch, capsys, out, steps, *extra, max_steps=20):
    """train.py in this process, the batches of `steps` multiplied by NaN: the task's batch() is wrapped for the run
    (a fresh run calls it once per step, skipped steps included). Returns what subprocess.run would."""
    real, calls = tasks.TokenizerTask.batch, []

    def batch(self, idx):
        out = real(self, idx)
        calls.append(1)
        return {k: v * float("nan") for k, v in out.items()} if len(calls) - 1 in steps else out

    monkeypatch.setattr(tasks.TokenizerTask, "batch", batch)
    try:
        train.main([*TINY, "--max-steps", str(max_steps), "--save-every", "5", "--out-dir", out, *extra])
        code = 0
    except SystemExit as e:
        code = e.code
    monkeypatch.undo()
    o = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=o.out, stderr=o.err)


def test_a_nan_loss_stops_with_one_line_naming_the_step_and_term_and_keeps_the_checkpoint(tmp_path, monkeypatch,
                                                                                           capsys):
    out = str(tmp_path / "o")
    r = nan_run(monkeypatch, capsys, out, [12])
    assert_ends_with_one_line_error(r, "non-finite", "at step 12", "rec", "step 10", "--resume", "--skip-nonfinite")
    ck = load_checkpoint(os.path.join(out, "tokenizer.pt"))
    assert ck["step"] == 10 and not ck["finished"]
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    # resuming without the fault finishes the run
    run("train.py", *TINY, "--max-steps", "20", "--save-every", "5", "--out-dir", out, "--resume")
    assert load_checkpoint(os.path.join(out, "tokenizer.pt"))["finished"]


def test_skip_nonfinite_skips_and_counts_the_bad_steps(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "o")
    r = nan_run(monkeypatch, capsys, out, [7, 8, 15], "--skip-nonfinite")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("skipped step") == 3
    ck = load_checkpoint(os.path.join(out, "tokenizer.pt"))
    assert ck["finished"] and ck["step"] == 20 and ck["skipped_steps"] == 3
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert [rec["skipped_steps"] for rec in read_log(out, "tokenizer") if "loss" in rec][-1] == 3
    # a run that keeps diverging still stops
    r = nan_run(monkeypatch, capsys, str(tmp_path / "o2"), range(3, 60), "--skip-nonfinite", max_steps=60)
    assert_ends_with_one_line_error(r, "non-finite", f"{guards.MAX_SKIPS_IN_A_ROW} steps in a row")


# -----------------------------------------------------------------------------
# The disk

def test_an_out_dir_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    r = run("train.py", *TINY, "--max-steps", "2", "--out-dir", str(tmp_path / "file" / "out"), check=False)
    assert_one_line_error(r, "cannot write to --out-dir", "choose another --out-dir")


def test_a_full_disk_at_save_is_one_line_and_the_last_checkpoint_still_loads(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "o")
    ckpt = os.path.join(out, "tokenizer.pt")
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):  # the second checkpoint write finds the disk full, half-way through
        if str(f).startswith(ckpt + ".tmp"):
            calls.append(f)
            if len(calls) == 2:
                with open(f, "wb") as fh:
                    fh.write(b"PK\x03\x04 half a checkpoint")
                raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(SystemExit) as e:
        train.main([*TINY, "--max-steps", "20", "--save-every", "5", "--out-dir", out])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # below the progress bar
    assert err.startswith("error: ") and "No space left on device" in err and "previous checkpoint is unchanged" in err
    ck = load_checkpoint(ckpt)
    assert ck["step"] == 5  # the last complete checkpoint
    assert not glob.glob(glob.escape(ckpt) + ".tmp*")  # and no half-written file is left
    monkeypatch.setattr(torch, "save", real_save)
    train.main([*TINY, "--max-steps", "20", "--save-every", "5", "--out-dir", out, "--resume"])
    assert load_checkpoint(ckpt)["finished"]


def test_training_refuses_to_overwrite_a_run_without_resume(tmp_path):
    out = str(tmp_path / "o")
    run("train.py", *TINY, "--max-steps", "3", "--out-dir", out)
    before = hashlib.sha256(open(os.path.join(out, "tokenizer.pt"), "rb").read()).hexdigest()
    r = run("train.py", *TINY, "--max-steps", "3", "--out-dir", out, check=False)
    assert_one_line_error(r, "already exists", "--resume")
    assert hashlib.sha256(open(os.path.join(out, "tokenizer.pt"), "rb").read()).hexdigest() == before


# -----------------------------------------------------------------------------
# torchrun

GRAD_CHECK = r'''
import json, os, sys
import torch
sys.path.insert(0, os.getcwd())
import flow, projector as pj, train

# One global batch of 8 with every random draw fixed: the text's noise, t, no CFG flags.
rank, world, device = train.setup_distributed("cpu")
torch.manual_seed(0)
pcfg = pj.ProjectorConfig(**{**vars(pj.PRESETS["tiny"]), "text_dim": 12, "num_tokens": 8, "token_dim": 4})
fcfg = flow.FlowConfig(**{**vars(flow.PRESETS["tiny"]), "num_tokens": 8, "token_dim": 4})
model = flow.TextToImage(pcfg, fcfg)
for p in model.parameters():  # past adaLN-Zero's zero init, so that every weight gets a gradient
    p.data.add_(0.05 * torch.randn_like(p))
g = torch.Generator().manual_seed(1)
text, z = torch.randn(8, 8, 12, generator=g), torch.randn(8, 8, 4, generator=g)
noise, t = torch.randn(8, 8, 4, generator=g), torch.rand(8, generator=g)
args = dict(kl_weight=1e-2, align_weight=1.0, flag_prob=0.0)

ref = None
if rank == 0:  # one process, the whole batch
    single = flow.TextToImage(pcfg, fcfg)
    single.load_state_dict(model.state_dict())
    single(text, z, **args, gather=False, noise=noise, t=t)[0].backward()
    ref = {n: p.grad.clone() for n, p in single.named_parameters()}
ddp = torch.nn.parallel.DistributedDataParallel(model)
share = slice(rank * 8 // world, (rank + 1) * 8 // world)  # train.py's split of the global batch
ddp(text[share], z[share], **args, gather=True, noise=noise[share], t=t[share])[0].backward()
if rank == 0:
    diff = max((p.grad - ref[n]).abs().max().item() for n, p in model.named_parameters())
    scale = max(ref[n].abs().max().item() for n in ref)
    json.dump({"max_abs_diff": diff, "max_abs_grad": scale, "world": world}, open(sys.argv[1], "w"))
del ddp  # its reducer's pending work goes first
train.teardown_distributed(world)
'''


def test_two_processes_compute_the_gradient_of_one(tmp_path):
    script = tmp_path / "grad_check.py"
    script.write_text(GRAD_CHECK)
    out = tmp_path / "grad.json"
    run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(out))
    r = json.loads(out.read_text())
    assert r["world"] == 2 and r["max_abs_grad"] > 1e-3
    assert r["max_abs_diff"] < 1e-5, r


def test_a_killed_rank_ends_the_run_with_a_message(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "train.py", *TINY, "--max-steps", "100000", "--out-dir", str(tmp_path / "o")],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    try:
        log = tmp_path / "o" / "tokenizer_log.jsonl"
        deadline = time.time() + 240
        while not log.exists() and time.time() < deadline and p.poll() is None:
            time.sleep(0.2)  # wait until both ranks are training
        assert p.poll() is None, "the run ended before a rank could be killed"
        ranks = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True)  # torchrun's workers
        pids = [int(x) for x in ranks.stdout.split()]
        assert len(pids) == 2, ranks.stdout
        t0 = time.time()
        os.kill(pids[-1], signal.SIGKILL)  # one rank dies
        _, err = p.communicate(timeout=120)  # the others must not hang
        assert p.returncode != 0 and time.time() - t0 < 120
        assert "train.py FAILED" in err, err[-2000:]  # torchrun's report names the failed rank
        assert "lost its peers" in err or "SIGTERM" in err, err[-2000:]  # the survivor: our one line, or stopped
        assert "[rank0]: Traceback" not in err and "[rank1]: Traceback" not in err, err[-3000:]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
