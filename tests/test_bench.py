"""bench.py, its measurements (benchmarks/measure.py) and its baselines: the FLOP count, the two 2D-latent designs,
the sampler's buffers, and a quick run. No speed is asserted here: the numbers are bench.py's output (README, Speed)."""
import dataclasses
import json
import os
import subprocess
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import flow
from benchmarks import baselines, measure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flow_flops_match_torch_flop_counter():
    """The hand count equals what torch counts on the real forward (attention through the math kernel, whose two
    batched products the counter sees; the CPU's fused kernel is not counted by it)."""
    for cfg in (flow.PRESETS["tiny"], dataclasses.replace(flow.PRESETS["tiny"], num_tokens=77, width=64, heads=4),
                flow.PRESETS["cpu"]):
        net = flow.VelocityNet(cfg).eval()
        B = 3
        x, t, f = torch.randn(B, cfg.num_tokens, cfg.token_dim), torch.rand(B), torch.zeros(B, dtype=torch.long)
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            net(x, t, f)
        assert measure.flow_flops(cfg, B) == counter.get_total_flops(), cfg


def test_patchify_round_trip_and_layout():
    z = torch.randn(2, *baselines.LATENT_SHAPE)
    x = baselines.patchify(z)
    assert x.shape == (2, 256, 16)
    assert torch.equal(baselines.unpatchify(x), z)
    # token 1 is the second 2 x 2 patch of the first row, channel-last
    assert torch.equal(x[0, 1], z[0, :, 0:2, 2:4].permute(1, 2, 0).reshape(-1))


def test_baselines_train_and_sample_at_matched_size():
    torch.manual_seed(0)
    pcfg, fcfg = measure.configs("tiny")
    M = fcfg.num_tokens
    text, latent = torch.randn(3, M, measure.TEXT_DIM), torch.randn(3, *baselines.LATENT_SHAPE)
    for model in (baselines.LDM2D(fcfg, measure.TEXT_DIM, M), baselines.CrossFlow2D(pcfg, fcfg, M)):
        loss = model.loss(text, latent)
        loss.backward()
        assert torch.isfinite(loss)
        net = model if isinstance(model, baselines.LDM2D) else model.flow
        assert len(net.blocks) == fcfg.depth and net.blocks[0].attn.heads == fcfg.heads
        assert net.x_out.in_features == fcfg.width  # matched width
        out = model.generate(text, steps=2)
        assert out.shape == (3, *baselines.LATENT_SHAPE) and torch.isfinite(out).all()
    ldm = baselines.LDM2D(fcfg, measure.TEXT_DIM, M)
    for p in ldm.parameters():
        p.data.normal_(0, 0.05)  # past adaLN-Zero's zero output layer, which passes no gradient back at init
    ldm.loss(text, latent, drop_prob=1.0).backward()
    assert ldm.null_text.grad.abs().sum() > 0  # dropped captions train the null text


def test_ldm_guidance_uses_the_text_and_the_null_text():
    """cfg 1: the conditional field alone; cfg 0: the null text's alone (the same Euler steps, by hand)."""
    torch.manual_seed(0)
    _, fcfg = measure.configs("tiny")
    ldm = baselines.LDM2D(fcfg, measure.TEXT_DIM, fcfg.num_tokens).eval()
    for p in ldm.parameters():
        p.data.normal_(0, 0.05)  # adaLN-Zero starts at v = 0: give the net something to say
    text = torch.randn(2, fcfg.num_tokens, measure.TEXT_DIM)
    null = ldm.null_text.expand_as(text)
    for scale, cond in ((1.0, text), (0.0, null)):
        torch.manual_seed(1)
        got = baselines.patchify(ldm.generate(text, steps=3, cfg_scale=scale))
        torch.manual_seed(1)
        x = torch.randn(2, 256, 16)
        with torch.no_grad():
            for i in range(3):
                x = x + ldm.velocity(x, torch.full((2,), i / 3), cond) / 3
        assert torch.allclose(got, x, atol=1e-5), scale


class Field(torch.nn.Module):
    """v = x + t, twice as fast on the flagged branch."""

    def forward(self, x, t, flag):
        return x + t[:, None, None] * (1 + flag[:, None, None])


def test_sampler_is_the_plain_guided_euler_loop():
    torch.manual_seed(0)
    x0 = torch.randn(5, 4, 3)
    out = flow.euler_sample(Field(), x0, steps=6, cfg_scale=2.0)
    x, t = x0.clone(), torch.zeros(5)
    for _ in range(6):  # the textbook loop: x <- x + dt * (v_flagged + s * (v_unflagged - v_flagged))
        vu, vf = Field()(x, t, torch.zeros(5, dtype=torch.long)), Field()(x, t, torch.ones(5, dtype=torch.long))
        x = x + (vf + 2.0 * (vu - vf)) / 6
        t = t + 1 / 6
    assert torch.allclose(out, x, atol=1e-5)


def test_quick_bench_writes_every_section(tmp_path):
    path = tmp_path / "b.json"
    proc = subprocess.run([sys.executable, "bench.py", "--quick", "--json", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(path.read_text())
    assert r["headline_preset"] == "tiny" and set(r["by_preset"]) == {"tiny"}
    for d in measure.DESIGNS:
        assert r["sampling"][f"{d}_img_s"] > 0 and r["training"][f"{d}_samples_s"] > 0
        assert r["memory"][f"sample_{d}_mb"] > 50 and r["memory"][f"train_{d}_mb"] > 50  # torch alone is more
    assert r["sampling"]["speedup_vs_ldm2d"] == r["sampling"]["flowtok_img_s"] / r["sampling"]["ldm2d_img_s"]
    assert round(r["mfu"]["gflop_per_forward"] * 1e9) == measure.flow_flops(flow.PRESETS["tiny"], r["mfu"]["rows"])
    # the MFU's peak: the run's, or the higher one its worker measured right before
    assert 0 < r["mfu"]["mfu"] < 1.5 and r["mfu"]["peak_gflops"] >= r["matmul_peak_gflops"]
    assert abs(sum(r["pipeline"]["share"].values()) - 1) < 1e-9
    assert 0 < r["data_loader"]["share_of_step"]
    assert len(r["checks"]) == 5 and all(isinstance(v, bool) for v in r["checks"].values())
    assert "preset tiny" in proc.stdout and "targets:" in proc.stdout


def test_bad_flags_are_one_line():
    for argv in (["--batch", "0"], ["--device", "tpu"], ["--preset", "Q"], ["--min-time", "-1"]):
        proc = subprocess.run([sys.executable, "bench.py", *argv], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, (argv, proc.stderr)
        assert "error" in proc.stderr
