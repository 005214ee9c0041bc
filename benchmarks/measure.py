"""
bench.py's measurements, one per process: `python -m benchmarks.measure SPEC` runs the one that the JSON SPEC names
and prints its result as one JSON line (bench.py starts one such process per measurement, so that a peak memory is
that measurement's alone).

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
import itertools
import json
import resource
import sys
import time
from types import SimpleNamespace

import torch

import flow
import pipeline
import projector as pj
import tokenizer as tok
from benchmarks import baselines
from layers import swiglu_hidden

DESIGNS = ("flowtok", "ldm2d", "crossflow2d")
SAMPLE_STEPS = flow.T2I_STEPS  # Euler steps per text-to-image sample, every design
TEXT_DIM = 384  # C: the embedded text encoder's width (MiniLM); the paper's CLIP has 768
TOKENIZER_FOR = {"tiny": "tiny", "cpu": "cpu", "S": "cpu", "B": "paper", "XL": "paper", "H": "paper"}


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


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
