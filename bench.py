"""
Benchmark FlowTok against the 2D-latent alternatives, side by side, at matched width / depth / heads.

    python bench.py                                # the CPU default and the paper's B size (~9 min on 2 CPU cores)
    python bench.py --preset B --json bench.json   # one preset; the numbers also as JSON
    python bench.py --preset B XL --device cuda --batch 64 --compile     # on a GPU: bf16, torch.compile
    python bench.py --quick                        # the tiny test preset: checks that the bench runs (~1 min)

The designs (benchmarks/baselines.py says how the two baselines are built):
    flowtok      the flow net on N x D text/image tokens (77 x 16 at B), text as the source, no cross-attention
    ldm2d        a text-conditioned DiT with cross-attention to the N text tokens, on a 32 x 32 x 4 latent cut
                 into 2 x 2 patches (256 tokens), from noise
    crossflow2d  CrossFlow: text as the source, on the same 256-token 2D latent, no cross-attention

What is measured, each in a fresh subprocess, so that a peak memory is that measurement's alone:
    sampling   images/s: SAMPLE_STEPS Euler steps with guidance (both branches in one batched forward), from text
               embeddings to latents. FlowTok also end to end ("pipeline"): captions -> text encoder -> projector ->
               flow -> tokenizer decoder -> pixels, with each part's share of the time.
    training   samples/s of one optimizer step (forward, backward, AdamW) on text embeddings and latents, as train.py
               trains from its caches.
    memory     peak resident memory of the process (CPU) or peak allocated memory (CUDA), in MB.
    mfu        the flow net's forward at the sampling batch (2 x --batch rows: the two guidance branches): FLOPs
               counted analytically (flow_flops) over the time, against the dense matmul peak measured at the start
               of the same run.
    loader     train.py's t2i data path (tasks.T2ITask.batch on caches of the default size) against a training step.
Timings are means over repeated runs after a warm-up run. On the CPU everything is fp32 (bf16 matmuls are slow
there); on CUDA sampling and training run under bf16 autocast, and the peak is a bf16 matmul.
"""
import argparse
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import time
from types import SimpleNamespace

import torch

import flow
import pipeline
import projector as pj
import tokenizer as tok
from common import ArgumentParser, fail
from layers import swiglu_hidden

DESIGNS = ("flowtok", "ldm2d", "crossflow2d")
SAMPLE_STEPS = flow.SAMPLE_STEPS  # Euler steps per sample, every design
TEXT_DIM = 384  # C: the embedded text encoder's width (MiniLM); the paper's CLIP has 768
TOKENIZER_FOR = {"tiny": "tiny", "cpu": "cpu", "S": "cpu", "B": "paper", "XL": "paper", "H": "paper"}
# Batches: (sampling, training) per preset and device kind; --batch / --train-batch override.
BATCHES = {"cpu": {"tiny": (8, 16), "cpu": (64, 128), "S": (16, 32), "B": (4, 8), "XL": (1, 2), "H": (1, 2)},
           "cuda": {"tiny": (64, 64), "cpu": (256, 256), "S": (64, 128), "B": (64, 64), "XL": (64, 64), "H": (64, 64)}}
MEMORY_BATCH = 64  # sampling memory is compared at the paper's sampling batch (below it, weights dominate)
PAPER_XL_A100_IMG_S = 22.7  # docs/METHOD.md, "Sizes": FlowTok-XL sampling throughput on an A100
# Done-when targets (issue 6), checked and reported at the end of a run.
MIN_SPEEDUP, MAX_TEXT_SHARE, MIN_MFU = 3.0, 0.25, 0.5


# -----------------------------------------------------------------------------
# FLOPs of the flow net, counted by hand

def flow_flops(cfg, batch):
    """Forward FLOPs of flow.VelocityNet(cfg) on `batch` samples: 2 per multiply-add of every matmul, i.e. the Linears
    and attention's two products (q k^T, then the weights times v). LayerNorm, SiLU, the adaLN arithmetic and the
    embeddings' lookups are left out, as usual: they are memory-bound and well under 1% of the count."""
    N, D, W, L = cfg.num_tokens, cfg.token_dim, cfg.width, cfg.depth
    hidden = swiglu_hidden(W)
    tokens = batch * N
    block = 2 * tokens * (3 * W * W + W * W + 3 * W * hidden)  # qkv, attention output, SwiGLU w1 / w3 / w2
    block += 2 * 2 * batch * N * N * W  # q k^T and (weights) v, summed over heads
    block += 2 * batch * W * 6 * W  # adaLN-Zero modulation from the condition vector
    ends = 2 * tokens * D * W * 2 + 2 * batch * (2 * W * W + 2 * W * W)  # x_in, x_out; t_embed (2 Linears), ada_out
    return L * block + ends


# -----------------------------------------------------------------------------
# Building the three designs at one preset

def configs(preset):
    """(projector config, flow config) of FlowTok at `preset`, on the embedded text encoder's width."""
    fcfg = flow.PRESETS[preset]
    pcfg = pj.ProjectorConfig(**{**vars(pj.PRESETS[preset]), "text_dim": TEXT_DIM, "num_tokens": fcfg.num_tokens,
                                 "token_dim": fcfg.token_dim})
    return pcfg, fcfg


def build(design, preset):
    from benchmarks import baselines
    pcfg, fcfg = configs(preset)
    if design == "flowtok":
        return flow.TextToImage(pcfg, fcfg)
    if design == "ldm2d":
        return baselines.LDM2D(fcfg, TEXT_DIM, fcfg.num_tokens)
    return baselines.CrossFlow2D(pcfg, fcfg, fcfg.num_tokens)


def compile_flow_net(design, model):
    """torch.compile the part that runs at every Euler step."""
    if design == "ldm2d":
        model.velocity = torch.compile(model.velocity)
    else:
        model.flow = torch.compile(model.flow)


def latent_shape(design, preset):
    from benchmarks import baselines
    fcfg = flow.PRESETS[preset]
    return (fcfg.num_tokens, fcfg.token_dim) if design == "flowtok" else baselines.LATENT_SHAPE


def training_loss(design, model, text, latent):
    if design == "flowtok":  # the t2i task's weights: flow + KL + alignment
        import tasks
        d = tasks.T2ITask.DEFAULTS
        return model(text, latent, d["kl_weight"], d["align_weight"])[0]
    return model.loss(text, latent)


# -----------------------------------------------------------------------------
# Measuring, inside a worker process

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, min_time, min_runs=1):
    """Mean seconds per call of fn() over at least min_runs calls and min_time seconds (after the caller's warm-up)."""
    runs, total = 0, 0.0
    while runs < min_runs or total < min_time:
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        total += time.perf_counter() - t0
        runs += 1
    return total / runs


def peak_memory_mb(device):
    """Peak resident set size of this process (CPU), or peak allocated CUDA memory, in MB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
    return kb / 2 ** 20 if sys.platform == "darwin" else kb / 2 ** 10


def autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def matmul_peak(device, min_time):
    """The best dense matmul rate of this device in GFLOP/s: square fp32 products on the CPU, bf16 on CUDA."""
    sizes, dtype = ((512, 1024, 2048, 4096), torch.float32) if device.type != "cuda" else ((4096, 8192), torch.bfloat16)
    best = {}
    for n in sizes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        best[n] = 2 * n ** 3 / timed(lambda: a @ b, device, min_time / len(sizes), min_runs=3) / 1e9
    return {"peak_gflops": max(best.values()), "by_size": best}


def measure_sample(spec, device):
    """Sampling throughput of all three designs in this one process, timed in interleaved rounds (flowtok, ldm2d,
    crossflow2d, flowtok, ...), so that a machine whose speed drifts (a shared VM) moves all three alike."""
    preset, B = spec["preset"], spec["batch"]
    text = torch.randn(B, flow.PRESETS[preset].num_tokens, TEXT_DIM, device=device)
    models = {}
    for design in DESIGNS:
        models[design] = build(design, preset).to(device).eval().requires_grad_(False)
        if spec["compile"]:
            compile_flow_net(design, models[design])
        models[design].generate(text, 1)  # warm-up (and compilation)
    sec = {d: [] for d in DESIGNS}
    while min(len(v) for v in sec.values()) < spec["rounds"] or min(sum(v) for v in sec.values()) < spec["min_time"]:
        for design, model in models.items():
            sec[design].append(timed(lambda: model.generate(text, SAMPLE_STEPS), device, 0))
    return {"img_s": {d: B * len(v) / sum(v) for d, v in sec.items()}, "sec_per_batch": sec,
            "params_m": {d: sum(p.numel() for p in m.parameters()) / 1e6 for d, m in models.items()}}


def measure_sample_memory(spec, device):
    """Peak memory of one design sampling a batch of spec["batch"]: one Euler step, as every step allocates alike."""
    model = build(spec["design"], spec["preset"]).to(device).eval().requires_grad_(False)
    text = torch.randn(spec["batch"], flow.PRESETS[spec["preset"]].num_tokens, TEXT_DIM, device=device)
    model.generate(text, 1)
    return {}


def measure_train(spec, device):
    design, preset, B = spec["design"], spec["preset"], spec["batch"]
    model = build(design, preset).to(device).train()
    if spec["compile"]:
        compile_flow_net(design, model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    text = torch.randn(B, flow.PRESETS[preset].num_tokens, TEXT_DIM, device=device)
    latent = torch.randn(B, *latent_shape(design, preset), device=device)

    def step():
        with autocast(device):
            loss = training_loss(design, model, text, latent)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: allocates the optimizer state
    sec = timed(step, device, spec["min_time"], min_runs=2)
    return {"samples_s": B / sec, "sec_per_step": sec}


def measure_mfu(spec, device):
    """The flow net alone, forward, at the sampling batch's 2B rows. The peak it is divided by is the higher of the
    run's (measured first) and one measured here, right before: a machine that slowed down since cannot flatter it."""
    cfg = flow.PRESETS[spec["preset"]]
    net = flow.VelocityNet(cfg).to(device).eval().requires_grad_(False)
    if spec["compile"]:
        net = torch.compile(net)
    rows = 2 * spec["batch"]
    x = torch.randn(rows, cfg.num_tokens, cfg.token_dim, device=device)
    t, flag = torch.rand(rows, device=device), torch.zeros(rows, dtype=torch.long, device=device)

    def forward():
        with torch.no_grad(), autocast(device):
            net(x, t, flag)

    forward()
    peak = max(spec["peak_gflops"], matmul_peak(device, spec["min_time"])["peak_gflops"])
    sec = timed(forward, device, spec["min_time"], min_runs=3)
    gflops = flow_flops(cfg, rows) / sec / 1e9
    return {"rows": rows, "gflop_per_forward": flow_flops(cfg, rows) / 1e9, "achieved_gflops": gflops,
            "peak_gflops": peak, "mfu": gflops / peak}


def measure_pipeline(spec, device):
    """FlowTok end to end: captions -> pixels, each part timed on its own over the same batch."""
    import data
    preset, B = spec["preset"], spec["batch"]
    fcfg = flow.PRESETS[preset]
    encoder = pj.TextEncoder(num_tokens=fcfg.num_tokens).to(device)
    model = build("flowtok", preset).to(device).eval().requires_grad_(False)
    if spec["compile"]:
        compile_flow_net("flowtok", model)
    tcfg = tok.TokenizerConfig(**{**vars(tok.PRESETS[TOKENIZER_FOR[preset]]), "num_latents": fcfg.num_tokens,
                                  "latent_dim": fcfg.token_dim})
    tokenizer = tok.Tokenizer(tcfg).to(device).eval().requires_grad_(False)
    val = data.ShapesDataset("val")
    captions = [val.caption(i) for i in range(B)]
    t2i = pipeline.TextToImagePipeline(model, tokenizer, encoder)
    with torch.no_grad():
        text = encoder(captions)
        z = model.generate(text, 1)
        with autocast(device):
            t2i.decode(z)  # warm-ups
        parts = {"text_encode": timed(lambda: encoder(captions), device, spec["min_time"] / 3),
                 "flow": timed(lambda: model.generate(text, SAMPLE_STEPS), device, spec["min_time"] / 3)}

        def decode():
            with autocast(device):
                t2i.decode(z)

        parts["decode"] = timed(decode, device, spec["min_time"] / 3)
    total = sum(parts.values())
    return {"img_s": B / total, "image_size": tcfg.image_size, "sec": parts,
            "share": {k: v / total for k, v in parts.items()},
            "text_share": (parts["text_encode"] + parts["decode"]) / total}


def measure_loader(spec, device):
    """tasks.T2ITask.batch, the t2i data path of train.py, on in-memory caches of the default size: 50,000 images'
    posteriors (mean, logvar) and the text embeddings of their captions (fp16, one per distinct caption)."""
    import data
    import tasks
    preset, B = spec["preset"], spec["batch"]
    fcfg = flow.PRESETS[preset]
    M, U, N, D = data.SPLIT_SIZES["train"], 2000, fcfg.num_tokens, fcfg.token_dim
    g = torch.Generator().manual_seed(0)
    task = SimpleNamespace(device=device, tokenizer=tok.Tokenizer(tok.PRESETS["tiny"]).to(device),
                           text=torch.randn(U, N, TEXT_DIM, generator=g).half(),
                           text_index=torch.randint(U, (M,), generator=g),
                           latents={"mean": torch.randn(M, N, D, generator=g), "logvar": torch.randn(M, N, D)})
    perm = torch.randperm(M, generator=g)
    batches = itertools.cycle([perm[i * B:(i + 1) * B].sort().values for i in range(M // B)])  # sorted, as train.py
    tasks.T2ITask.batch(task, next(batches))
    sec = timed(lambda: tasks.T2ITask.batch(task, next(batches)), device, spec["min_time"], min_runs=5)
    return {"sec_per_batch": sec, "samples_s": B / sec}


def worker(spec):
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    measure = {"peak": lambda: matmul_peak(device, spec["min_time"]), "sample": lambda: measure_sample(spec, device),
               "sample_memory": lambda: measure_sample_memory(spec, device),
               "train": lambda: measure_train(spec, device), "mfu": lambda: measure_mfu(spec, device),
               "pipeline": lambda: measure_pipeline(spec, device), "loader": lambda: measure_loader(spec, device)}
    out = measure[spec["mode"]]()
    out["peak_memory_mb"] = peak_memory_mb(device)
    print(json.dumps(out))


# -----------------------------------------------------------------------------
# The run: one subprocess per measurement, then a table

def run_worker(spec):
    """Run one measurement in a fresh Python; its result dict, or {'error': ...} with the worker's last line."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__)))
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"{spec['mode']} {spec.get('design', '')} {spec.get('preset', '')}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine(device):
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return {"device": device.type, "name": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "precision": "bf16 autocast" if device.type == "cuda" else "fp32"}


def bench_preset(preset, args, peak, say):
    """Every measurement at one preset -> (the sections of the JSON, with the issue's names; error lines)."""
    kind = "cuda" if args.device == "cuda" else "cpu"
    sample_b, train_b = BATCHES[kind][preset]
    sample_b, train_b = args.batch or sample_b, args.train_batch or train_b
    base = {"preset": preset, "device": args.device, "compile": args.compile, "min_time": args.min_time}
    fcfg = flow.PRESETS[preset]
    settings = {"sample_batch": sample_b, "train_batch": train_b, "memory_batch": args.memory_batch,
                "steps": SAMPLE_STEPS, "rounds": args.rounds, "width": fcfg.width, "depth": fcfg.depth,
                "heads": fcfg.heads, "flowtok_tokens": fcfg.num_tokens, "grid_tokens": 256}
    errors, nan = [], float("nan")

    def run(what, **spec):
        say(f"[{preset}] {what} ...")
        out = run_worker({**base, **spec})
        if "error" in out:
            errors.append(out["error"])
        return out

    smp = run(f"sampling: the three designs interleaved, {args.rounds} round(s)", mode="sample", batch=sample_b,
              rounds=args.rounds)
    s = {f"{d}_img_s": smp.get("img_s", {}).get(d, nan) for d in DESIGNS}
    s.update({f"speedup_vs_{d}": s["flowtok_img_s"] / s[f"{d}_img_s"] for d in DESIGNS[1:]})
    mem, t, train_sec = {}, {}, nan
    for d in DESIGNS:
        mem[f"sample_{d}_mb"] = run(f"sampling memory, {d}", mode="sample_memory", design=d,
                                    batch=args.memory_batch).get("peak_memory_mb", nan)
    for d in DESIGNS:
        tr = run(f"training, {d}", mode="train", design=d, batch=train_b)
        t[f"{d}_samples_s"], mem[f"train_{d}_mb"] = tr.get("samples_s", nan), tr.get("peak_memory_mb", nan)
        if d == "flowtok":
            train_sec = tr.get("sec_per_step", nan)
    t.update({f"speedup_vs_{d}": t["flowtok_samples_s"] / t[f"{d}_samples_s"] for d in DESIGNS[1:]})
    m = run("MFU", mode="mfu", batch=sample_b, peak_gflops=peak)
    mfu = {k: m.get(k) for k in ("rows", "gflop_per_forward", "achieved_gflops", "peak_gflops", "mfu")}
    p = run("pipeline", mode="pipeline", batch=sample_b)
    s["flowtok_pipeline_img_s"] = p.get("img_s", nan)
    pipe = {"img_s": p.get("img_s"), "image_size": p.get("image_size"), "sec": p.get("sec"), "share": p.get("share"),
            "text_encode_plus_decode_share": p.get("text_share")}
    ld = run("data loader", mode="loader", batch=train_b)
    loader = {"sec_per_batch": ld.get("sec_per_batch"), "train_step_sec": train_sec,
              "share_of_step": ld.get("sec_per_batch", nan) / train_sec}
    return {"settings": settings, "params_m": smp.get("params_m", {}), "sampling": s, "training": t, "memory": mem,
            "mfu": mfu, "pipeline": pipe, "data_loader": loader}, errors


def print_table(preset, S, say):
    st = S["settings"]
    say(f"\npreset {preset}: width {st['width']}, depth {st['depth']}, heads {st['heads']}; sampling batch "
        f"{st['sample_batch']} ({st['steps']} Euler steps, guidance, {st['rounds']} interleaved rounds), training "
        f"batch {st['train_batch']}; peak memory sampling a batch of {st['memory_batch']}, training a batch of "
        f"{st['train_batch']}")
    say(f"{'design':<13}{'tokens':>7}{'params':>9}{'sample img/s':>14}{'flowtok x':>10}{'train smp/s':>13}"
        f"{'flowtok x':>10}{'peak MB sample':>16}{'peak MB train':>15}")
    for d in DESIGNS:
        tokens = st["flowtok_tokens"] if d == "flowtok" else st["grid_tokens"]
        s_img, t_smp = S["sampling"][f"{d}_img_s"], S["training"][f"{d}_samples_s"]
        xs = S["sampling"].get(f"speedup_vs_{d}", 1.0)
        xt = S["training"].get(f"speedup_vs_{d}", 1.0)
        say(f"{d:<13}{tokens:>7}{S['params_m'][d] or float('nan'):>8.1f}M{s_img:>14.3f}{xs:>9.2f}x{t_smp:>13.2f}"
            f"{xt:>9.2f}x{S['memory'][f'sample_{d}_mb']:>16.0f}{S['memory'][f'train_{d}_mb']:>15.0f}")
    p, m, ld = S["pipeline"], S["mfu"], S["data_loader"]
    if p.get("sec"):
        say(f"flowtok end to end ({p['image_size']} px): {p['img_s']:.3f} img/s; text encoder "
            f"{100 * p['share']['text_encode']:.1f}%, projector + flow {100 * p['share']['flow']:.1f}%, "
            f"tokenizer decoder {100 * p['share']['decode']:.1f}% (text encode + decode "
            f"{100 * p['text_encode_plus_decode_share']:.1f}%)")
    if m.get("mfu") is not None:
        say(f"flow net forward, {m['rows']} rows: {m['achieved_gflops']:.1f} GFLOP/s of a measured "
            f"{m['peak_gflops']:.1f} GFLOP/s matmul peak: MFU {100 * m['mfu']:.1f}%")
    if ld.get("sec_per_batch") is not None:
        say(f"data loader (tasks.T2ITask.batch): {1000 * ld['sec_per_batch']:.2f} ms per batch of "
            f"{st['train_batch']}, {100 * ld['share_of_step']:.2f}% of a {1000 * ld['train_step_sec']:.0f} ms "
            f"training step")


def checks(by_preset):
    """The issue's targets, where this run measured them: speed and memory at the largest preset run (the matched
    size), MFU there, the text share at the CPU default."""
    out = {}
    big = max(by_preset, key=lambda p: flow.PRESETS[p].width * flow.PRESETS[p].depth)
    S = by_preset[big]
    for d in DESIGNS[1:]:
        out[f"{big}: sampling >= {MIN_SPEEDUP:g}x {d}"] = S["sampling"][f"speedup_vs_{d}"] >= MIN_SPEEDUP
        out[f"{big}: lower peak memory than {d} (sampling and training)"] = all(
            S["memory"][f"{mode}_flowtok_mb"] < S["memory"][f"{mode}_{d}_mb"] for mode in ("sample", "train"))
    out[f"{big}: flow forward MFU >= {MIN_MFU:.0%}"] = (S["mfu"]["mfu"] or 0) >= MIN_MFU
    if "cpu" in by_preset:
        share = by_preset["cpu"]["pipeline"]["text_encode_plus_decode_share"]
        out[f"cpu (default): text encode + decode <= {MAX_TEXT_SHARE:.0%} of the pipeline"] = (
            share is not None and share <= MAX_TEXT_SHARE)
    return out


def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", nargs="+", default=["cpu", "B"], choices=list(flow.PRESETS),
                   help="model sizes to compare at (default: cpu B; a GPU: B XL)")
    p.add_argument("--device", default="auto", help="auto (cuda if there is one), cpu or cuda")
    p.add_argument("--batch", type=int, help="sampling batch (default: per preset and device, see BATCHES)")
    p.add_argument("--train-batch", type=int, help="training batch (default: per preset and device)")
    p.add_argument("--min-time", type=float, default=3.0, help="seconds each timing runs for at least (default: 3)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved sampling rounds of the three designs (default: 2)")
    p.add_argument("--memory-batch", type=int, default=MEMORY_BATCH,
                   help=f"the batch whose sampling peak memory is compared (default: {MEMORY_BATCH}, the paper's)")
    p.add_argument("--compile", action="store_true", help="torch.compile the flow nets (CUDA)")
    p.add_argument("--quick", action="store_true", help="the tiny preset, short timings: checks the bench runs")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one measurement, as JSON: how the run calls itself
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.min_time, args.rounds, args.memory_batch = ["tiny"], min(args.min_time, 0.2), 1, 8
    if any(v is not None and v <= 0 for v in (args.batch, args.train_batch, args.rounds, args.memory_batch)):
        p.error("--batch, --train-batch, --rounds and --memory-batch must be positive")
    if args.min_time < 0:
        p.error("--min-time must be >= 0")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device not in ("cpu", "cuda"):
        p.error(f"--device must be auto, cpu or cuda, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return args


def main(argv=None):
    args = get_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    say = print
    device = torch.device(args.device)
    info = machine(device)
    say(f"flowtok bench on {info['name']} ({info['device']}, {info['threads']} threads, torch {info['torch']}, "
        f"{info['precision']})")
    peak = run_worker({"mode": "peak", "device": args.device, "min_time": args.min_time})
    if "error" in peak:
        fail(f"the matmul peak could not be measured: {peak['error']}")
    say(f"matmul peak: {peak['peak_gflops']:.1f} GFLOP/s (best of square products "
        f"{', '.join(str(n) for n in peak['by_size'])})")
    t0 = time.time()
    by_preset, errors = {}, []
    for preset in args.preset:
        by_preset[preset], errs = bench_preset(preset, args, peak["peak_gflops"], say)
        errors += errs
        print_table(preset, by_preset[preset], say)
    result = {"machine": info, "matmul_peak_gflops": peak["peak_gflops"], "wall_seconds": time.time() - t0}
    headline = args.preset[-1]  # the flat sections are the last preset's (the largest, by the default order)
    result.update({k: by_preset[headline][k] for k in ("sampling", "training", "memory", "mfu", "pipeline",
                                                        "data_loader")})
    result["headline_preset"] = headline
    result["by_preset"] = by_preset
    if device.type == "cuda" and "XL" in by_preset:
        result["paper_xl_a100_img_s"] = PAPER_XL_A100_IMG_S
        say(f"\nFlowTok-XL here {by_preset['XL']['sampling']['flowtok_img_s']:.1f} img/s; the paper's on an A100: "
            f"{PAPER_XL_A100_IMG_S} img/s")
    result["checks"] = checks(by_preset)
    say("\ntargets:")
    for name, ok in result["checks"].items():
        say(f"  {'PASS' if ok else 'FAIL'}  {name}")
    say(f"({time.time() - t0:.0f} s)")
    if args.json:
        tmp = args.json + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(result, f, indent=1)
            os.replace(tmp, args.json)
        except OSError as e:
            fail(f"could not write --json {args.json}: {e.strerror or e}")
        say(f"wrote {args.json}")
    if errors:
        fail(f"{len(errors)} measurement(s) failed; the first: {errors[0]}")


if __name__ == "__main__":
    main()
