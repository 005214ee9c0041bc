"""train.py and evaluate.py end to end, on the tiny preset: loss falls, exact resume, torchrun, bad input."""
import json
import os
import subprocess
import sys

import pytest
import torch

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--task", "tokenizer", "--preset", "tiny", "--num-train", "256", "--batch-size", "16",
        "--log-every", "2", "--sample-every", "1000", "--save-every", "1000"]


def run(*args, check=True, launcher=(sys.executable,)):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*launcher, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def read_log(out_dir, task):
    """All records of out_dir/<task>_log.jsonl."""
    with open(os.path.join(out_dir, f"{task}_log.jsonl")) as f:
        return [json.loads(line) for line in f]


def log_losses(out_dir):
    return [(rec["step"], rec["loss"]) for rec in read_log(out_dir, "tokenizer") if "loss" in rec]


def assert_one_line_error(r, *needles):
    assert r.returncode != 0
    err = r.stderr.strip()
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_training_loss_falls_and_evaluate_reads_it(tmp_path):
    out = str(tmp_path / "out")
    run("train.py", *TINY, "--max-steps", "60", "--lr", "3e-3", "--out-dir", out)
    losses = [l for _, l in log_losses(out)]
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:2]) / 2, losses
    shares = [rec["data_share"] for rec in read_log(out, "tokenizer") if "loss" in rec]
    assert all(0 < s < 1 for s in shares), shares  # the share of wall time spent in the data loader
    for name in ("tokenizer.pt", "tokenizer_loss.png", "tokenizer_preview.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    ck = torch.load(os.path.join(out, "tokenizer.pt"), weights_only=True)
    assert ck["finished"] and ck["step"] == 60 and ck["config"]["lr"] == 3e-3
    assert ck["model_config"]["num_latents"] == 8 and ck["ema"]["latent_scale"] > 0
    assert [e["step"] for e in ck["evals"]] == [60] and ck["evals"][0]["val_psnr"] > 10
    r = run("evaluate.py", "--task", "tokenizer", "--out-dir", out, "--n", "64", "--json", str(tmp_path / "r.json"))
    res = json.load(open(tmp_path / "r.json"))["tokenizer"]
    assert 10 < res["psnr"] < 60 and res["n"] == 64 and "psnr" in r.stdout


def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    run("train.py", *TINY, "--max-steps", "16", "--out-dir", a)
    r = run("train.py", *TINY, "--max-steps", "16", "--out-dir", b, "--stop-at-step", "7")
    assert "stopped at step 7" in r.stdout
    assert torch.load(os.path.join(b, "tokenizer.pt"), weights_only=True)["step"] == 7
    run("train.py", *TINY, "--max-steps", "16", "--out-dir", b, "--resume")
    assert log_losses(a) == log_losses(b)  # every logged loss, bit for bit
    wa = torch.load(os.path.join(a, "tokenizer.pt"), weights_only=True)
    wb = torch.load(os.path.join(b, "tokenizer.pt"), weights_only=True)
    for k in wa["model"]:
        assert torch.equal(wa["model"][k], wb["model"][k]), k
        assert torch.equal(wa["ema"][k], wb["ema"][k]), k


def test_torchrun_two_cpu_processes(tmp_path):
    out = str(tmp_path / "ddp")
    r = run("train.py", *TINY, "--max-steps", "6", "--out-dir", out,
            launcher=(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"))
    assert "2 process(es)" in r.stdout
    ck = torch.load(os.path.join(out, "tokenizer.pt"), weights_only=True)
    assert ck["step"] == 6 and ck["finished"]
    assert len(log_losses(out)) == 3  # rank 0 alone writes the log


def test_missing_and_empty_data_are_one_line_errors(tmp_path):
    r = run("train.py", *TINY, "--out-dir", str(tmp_path / "o"), "--data", str(tmp_path / "nope"), check=False)
    assert_one_line_error(r, str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    r = run("train.py", *TINY, "--out-dir", str(tmp_path / "o"), "--data", str(tmp_path / "empty"), check=False)
    assert_one_line_error(r, str(tmp_path / "empty"))


def test_unreadable_images_are_skipped_and_reported(tmp_path):
    from PIL import Image
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        Image.new("RGB", (20 + i, 24), (10 * i, 100, 200)).save(folder / f"im{i}.png")
        (folder / f"im{i}.txt").write_text(f"a picture number {i}")
    (folder / "broken.png").write_bytes(b"not a png at all")
    (folder / "broken.txt").write_text("a broken picture")
    out = str(tmp_path / "o")
    r = run("train.py", *TINY, "--max-steps", "2", "--out-dir", out, "--data", str(folder), "--num-train", "1000")
    assert "skipped 1 unreadable" in r.stdout, r.stdout


def test_bad_flags_are_usage_errors(tmp_path):
    for flags in (["--batch-size", "0"], ["--max-steps", "-3"], ["--preset", "huge"]):
        r = run("train.py", *TINY, "--out-dir", str(tmp_path / "o"), *flags, check=False)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (flags, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and flags[0] in r.stderr, r.stderr
    r = run("train.py", "--task", "nope", check=False)
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_task_specific_flags_are_errors_elsewhere(capsys):
    for argv, says in ((["--task", "tokenizer", "--text-encoder", "x"], "--text-encoder applies to --task t2i and "
                                                                          "textae, not tokenizer"),
                       (["--task", "t2i", "--word-dropout", "0.2"], "--word-dropout applies to --task textae, not t2i"),
                       (["--task", "textae", "--hue-augment", "0.5"], "--hue-augment applies to --task tokenizer"),
                       (["--task", "t2i", "--source-noise", "0.1"], "--source-noise applies to --task i2t"),
                       (["--task", "i2t", "--kl-weight", "0.1"], "train those one at a time"),
                       (["--task", "textae", "--image-size", "64"], "--image-size applies to --task tokenizer"),
                       (["--task", "textae", "--word-dropout", "1.5"], "--word-dropout must be in [0, 1)"),
                       (["--task", "textae", "--recolor", "-0.1"], "--recolor must be in [0, 1]"),
                       (["--task", "textae", "--data", "/data/coco", "--recolor", "0.5"],
                        "--recolor swaps Shapes colour words and applies to --data shapes")):
        with pytest.raises(SystemExit) as e:
            train.get_args(argv)
        assert e.value.code == 2 and says in capsys.readouterr().err, argv
    assert train.get_args(["--task", "tokenizer"]).hue_augment == train.TASK_DEFAULTS["tokenizer"]["hue_augment"]


def test_a_missing_prerequisite_gets_every_flag_that_applies_to_it(tmp_path):
    out = str(tmp_path / "new")
    tok_run, t2i_run = train.plan(train.get_args(["--task", "t2i", "--out-dir", out, "--num-tokens", "8",
                                                  "--image-size", "16", "--hue-augment", "0.3", "--seed", "3",
                                                  "--num-train", "64", "--lr", "5e-4"]))
    assert tok_run.task == "tokenizer" and t2i_run.task == "t2i" and tok_run.resume
    assert (tok_run.num_tokens, tok_run.image_size, tok_run.hue_augment, tok_run.seed, tok_run.num_train) == (
        8, 16, 0.3, 3, 64)
    assert tok_run.lr == train.TASK_DEFAULTS["tokenizer"]["lr"] and t2i_run.lr == 5e-4  # the t2i's own flag stays
    runs = train.plan(train.get_args(["--task", "i2t", "--out-dir", out, "--num-tokens", "8", "--recolor", "0.2"]))
    assert [r.task for r in runs] == ["tokenizer", "textae", "i2t"]
    assert [r.num_tokens for r in runs[:2]] == [8, 8] and runs[1].recolor == 0.2  # N goes to both halves
    assert not os.path.exists(out)  # planning does no work


def test_every_input_is_checked_before_any_work(tmp_path):
    """A missing text encoder used to surface after the tokenizer's minutes of training; now it is the first line."""
    out = tmp_path / "new"
    r = run("train.py", "--task", "t2i", "--out-dir", str(out), "--text-encoder", "/nonexistent/model", check=False)
    assert_one_line_error(r, "/nonexistent/model", "not found")
    r = run("train.py", "--task", "i2t", "--out-dir", str(out), "--data", str(tmp_path / "nodata"), check=False)
    assert_one_line_error(r, "nodata", "not found")
    assert not out.exists()  # nothing was trained, nothing written


def test_recolor_default_applies_to_shapes_only():
    # The textae default recolours Shapes captions; on other data the default is 0 (not an error), and an explicit
    # 0 is accepted there too.
    shapes = train.get_args(["--task", "textae"]).recolor
    assert shapes == train.TASK_DEFAULTS["textae"]["recolor"] and shapes > 0
    assert train.get_args(["--task", "textae", "--data", "/data/coco"]).recolor == 0.0
    assert train.get_args(["--task", "textae", "--data", "/data/coco", "--recolor", "0"]).recolor == 0.0


def test_evaluate_without_checkpoint_names_the_command(tmp_path):
    r = run("evaluate.py", "--task", "tokenizer", "--out-dir", str(tmp_path), check=False)
    assert_one_line_error(r, "python train.py --task tokenizer")


def test_perceptual_loss_from_a_local_exported_network(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    ep = torch.export.export(net, (torch.rand(2, 3, 16, 16),), dynamic_shapes=({0: torch.export.Dim("b")},))
    torch.export.save(ep, str(tmp_path / "feat.pt2"))
    out = str(tmp_path / "o")
    run("train.py", *TINY, "--max-steps", "4", "--out-dir", out, "--perceptual", str(tmp_path / "feat.pt2"))
    recs = [r for r in read_log(out, "tokenizer") if "loss" in r]
    assert len(recs) == 2 and all(r["perceptual"] > 0 for r in recs)
    edge_w = train.TASK_DEFAULTS["tokenizer"]["edge_weight"]
    assert all(abs(r["loss"] - r["rec"] - edge_w * r["edge"] - r["perceptual"] - 1e-6 * r["kl"] / (3 * 16 * 16)) < 1e-6
               for r in recs)
    fresh = str(tmp_path / "fresh")  # (into `out` again, train.py would refuse first: its run is there)
    r = run("train.py", *TINY, "--out-dir", fresh, "--perceptual", str(tmp_path / "missing.pt"), check=False)
    assert_one_line_error(r, "missing.pt")
    (tmp_path / "junk.pt2").write_bytes(b"junk")
    r = run("train.py", *TINY, "--out-dir", fresh, "--perceptual", str(tmp_path / "junk.pt2"), check=False)
    assert_one_line_error(r, "junk.pt2")
