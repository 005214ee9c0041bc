"""Text-to-image end to end on tiny models: train.py --task t2i, sample.py, evaluate.py --task t2i."""
import json
import os
import shutil

import pytest
import torch

from test_train import run, read_log, assert_one_line_error

TOK = ["--task", "tokenizer", "--preset", "tiny", "--num-train", "256", "--batch-size", "16", "--max-steps", "30",
       "--lr", "3e-3", "--sample-every", "1000"]
T2I = ["--task", "t2i", "--preset", "tiny", "--num-train", "256", "--batch-size", "32", "--lr", "3e-3",
       "--log-every", "5", "--sample-every", "40", "--save-every", "1000"]
JUDGE = ["--judge-images", "512", "--judge-steps", "40"]  # a cheap judge (cached under its own name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("t2i") / "out")
    run("train.py", *TOK, "--out-dir", out)
    run("train.py", *T2I, "--max-steps", "80", "--out-dir", out)
    return out


def test_t2i_trains_and_logs_what_it_should(trained):
    log = read_log(trained, "t2i")
    train_recs = [r for r in log if "loss" in r]
    first, last = train_recs[0], train_recs[-1]
    for k in ("flow", "kl", "align", "temperature", "flow_t0", "flow_t4"):
        assert k in last, last
    assert last["flow"] < 0.8 * first["flow"], (first["flow"], last["flow"])  # the flow learns something
    assert [r["step"] for r in log if "val_flow" in r] == [40, 80]
    for name in ("t2i.pt", "t2i_loss.png", "t2i_preview.png"):
        assert os.path.getsize(os.path.join(trained, name)) > 0
    ck = torch.load(os.path.join(trained, "t2i.pt"), weights_only=True)
    assert ck["finished"] and ck["step"] == 80
    assert ck["model_config"]["tokenizer"].startswith("tokenizer-step30")
    assert ck["model_config"]["flow"]["num_tokens"] == 8 and ck["model_config"]["projector"]["text_dim"] == 384


def test_t2i_resume_is_exact(trained, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for d in (a, b):
        os.makedirs(d)
        shutil.copy(os.path.join(trained, "tokenizer.pt"), d)  # same frozen tokenizer, fresh flows
    run("train.py", *T2I, "--max-steps", "20", "--out-dir", a)
    r = run("train.py", *T2I, "--max-steps", "20", "--out-dir", b, "--stop-at-step", "8")
    assert "stopped at step 8" in r.stdout
    run("train.py", *T2I, "--max-steps", "20", "--out-dir", b, "--resume")
    losses = lambda d: [(r["step"], r["loss"], r["flow"]) for r in read_log(d, "t2i") if "loss" in r]
    assert losses(a) == losses(b)
    ea = torch.load(os.path.join(a, "t2i.pt"), weights_only=True)["ema"]
    eb = torch.load(os.path.join(b, "t2i.pt"), weights_only=True)["ema"]
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


def test_t2i_trains_the_missing_tokenizer_first(tmp_path, monkeypatch, capsys):
    import train
    monkeypatch.setitem(train.TASK_DEFAULTS, "tokenizer", {**train.TASK_DEFAULTS["tokenizer"], "preset": "tiny",
                                                           "max_steps": 6, "batch_size": 8})
    out = str(tmp_path / "fresh")
    train.main([*T2I, "--max-steps", "4", "--out-dir", out, "--sample-every", "1000"])
    printed = capsys.readouterr().out
    assert "notice: no trained tokenizer" in printed
    assert torch.load(os.path.join(out, "tokenizer.pt"), weights_only=True)["step"] == 6
    assert torch.load(os.path.join(out, "t2i.pt"), weights_only=True)["step"] == 4


def test_t2i_under_torchrun_with_gathered_negatives(trained, tmp_path):
    out = str(tmp_path / "ddp")
    os.makedirs(out)
    shutil.copy(os.path.join(trained, "tokenizer.pt"), out)
    run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *T2I, "--max-steps", "6",
        "--out-dir", out, "--gather-negatives", "--device", "cpu")
    assert torch.load(os.path.join(out, "t2i.pt"), weights_only=True)["step"] == 6


def test_sample_is_deterministic_and_per_prompt(trained, tmp_path):
    import pipeline
    t2i = pipeline.load_text_to_image(trained)
    a = t2i.images(["a big red circle"], n=3, seed=5)
    ab = t2i.images(["a tiny blue box", "a big red circle"], n=3, seed=5)
    assert a.shape == (3, 3, 16, 16) and ab.shape == (6, 3, 16, 16)
    assert torch.allclose(a, ab[3:], atol=1e-5)  # a prompt's images do not depend on its neighbours
    assert not torch.allclose(a[0], a[1])  # different samples of one prompt differ
    assert not torch.allclose(a, t2i.images(["a big red circle"], n=3, seed=6))
    paths = [str(tmp_path / f"s{i}.png") for i in range(2)]
    for p in paths:
        r = run("sample.py", "--out-dir", trained, "--prompt", "a large red circle at the top", "--prompt",
                "a small blue square on the left", "--n", "2", "--steps", "5", "--out", p)
        assert f"wrote {p}" in r.stdout
    assert open(paths[0], "rb").read() == open(paths[1], "rb").read()
    r = run("sample.py", "--out-dir", trained, "--prompt", "a large red circle at the very top of the whole image",
            "--n", "1", "--steps", "2", "--out", paths[0])
    assert "truncated" in r.stdout  # tiny preset: N = 8 tokens


def test_sample_bad_input(trained, tmp_path):
    assert_one_line_error(run("sample.py", "--out-dir", trained, "--prompt", " ", check=False), "empty prompt")
    assert_one_line_error(run("sample.py", "--out-dir", str(tmp_path), "--prompt", "a", check=False),
                          "t2i.pt", "python train.py --task t2i")
    assert_one_line_error(run("sample.py", "--out-dir", trained, check=False), "--prompt")
    assert_one_line_error(run("sample.py", "--out-dir", trained, "--prompts", str(tmp_path / "nope.txt"),
                              check=False), "nope.txt")
    # a t2i model next to a tokenizer it was not trained on
    other = str(tmp_path / "other")
    os.makedirs(other)
    shutil.copy(os.path.join(trained, "t2i.pt"), other)
    run("train.py", *TOK, "--max-steps", "3", "--out-dir", other)
    assert_one_line_error(run("sample.py", "--out-dir", other, "--prompt", "a", check=False), "not the tokenizer")


def test_evaluate_t2i_reports_everything(trained, tmp_path):
    res_path = str(tmp_path / "r.json")
    run("evaluate.py", "--task", "t2i", "--out-dir", trained, "--n", "60", *JUDGE, "--steps", "4",
        "--json", res_path)
    res = json.load(open(res_path))["t2i"]
    for k in ("judge_acc", "recon_judge_acc", "recon_judge_acc_seen", "recon_judge_acc_heldout", "acc_all_seen",
              "acc_all_heldout", "acc_shape", "acc_color", "acc_size", "acc_position", "probe_text_zt_heldout",
              "probe_real_zi_heldout", "probe_generated_zi_heldout"):
        assert 0.0 <= res[k] <= 1.0, (k, res[k])
    pairs = [k for k in res if k.startswith("acc_all_") and k.count("_") == 3]  # acc_all_<colour>_<shape>
    assert pairs and all(p[len("acc_all_"):] in ("yellow_circle", "purple_square", "blue_triangle") for p in pairs)
    assert res["fd"] >= 0 and res["n"] == 60 and 0 < res["n_heldout"] < 60 and res["steps"] == 4
    import data
    assert os.path.exists(os.path.join(trained, f"judge-16-{data.SHAPES_VERSION}-512x40.pt"))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "a large red circle at the top", "shape": "circle", "color": "red",
                                   "size": "large", "position": "top"}) + "\n")
    run("evaluate.py", "--task", "t2i", "--out-dir", trained, "--prompts", str(prompts), *JUDGE, "--steps", "4",
        "--json", res_path)
    res = json.load(open(res_path))
    assert "t2i" in res and res["t2i_prompts"]["n"] == 1 and 0 <= res["t2i_prompts"]["acc_all"] <= 1
    prompts.write_text('{"prompt": "a red circle", "shape": "hexagon", "color": "red", "size": "large", '
                       '"position": "top"}\n')
    assert_one_line_error(run("evaluate.py", "--task", "t2i", "--out-dir", trained, "--prompts", str(prompts),
                              *JUDGE, check=False), "hexagon")


def test_an_exported_run_draws_the_same_pictures(trained, tmp_path):
    """export.py writes safetensors + JSON per component, no pickle; the pipeline reads the folder and draws bit for
    bit what the out-dir draws."""
    import pipeline
    exported = str(tmp_path / "shared")
    r = run("export.py", "--out-dir", trained, "--to", exported)
    assert f"wrote {exported}: tokenizer, t2i" in r.stdout
    assert {c: sorted(os.listdir(os.path.join(exported, c))) for c in os.listdir(exported)} == {
        c: ["config.json", "model.safetensors"] for c in ("tokenizer", "t2i")}
    a = pipeline.load_text_to_image(trained).images(["a big red circle", "a tiny blue box"], n=2, seed=3)
    b = pipeline.load_text_to_image(exported).images(["a big red circle", "a tiny blue box"], n=2, seed=3)
    assert torch.equal(a, b)
    paths = [str(tmp_path / f"{name}.png") for name in ("out", "exported")]
    for d, p in zip((trained, exported), paths):
        run("sample.py", "--out-dir", d, "--prompt", "a large red circle at the top", "--n", "2", "--out", p)
    assert open(paths[0], "rb").read() == open(paths[1], "rb").read()


def test_a_flag_that_contradicts_the_frozen_tokenizer_is_an_error(trained):
    """--num-tokens (or --image-size, --hue-augment) for a tokenizer that is already trained must agree with it."""
    import train
    from common import UserError
    N = torch.load(os.path.join(trained, "tokenizer.pt"), weights_only=True)["model_config"]["num_latents"]
    with pytest.raises(UserError, match=f"--num-tokens {2 * N} contradicts the trained tokenizer"):
        train.plan(train.get_args(["--task", "t2i", "--out-dir", trained, "--num-tokens", str(2 * N)]))
    with pytest.raises(UserError, match="--hue-augment 0.9 contradicts the trained tokenizer"):
        train.plan(train.get_args(["--task", "t2i", "--out-dir", trained, "--hue-augment", "0.9"]))
    runs = train.plan(train.get_args(["--task", "t2i", "--out-dir", trained, "--num-tokens", str(N)]))
    assert [r.task for r in runs] == ["t2i"]  # agrees: nothing to train first
