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

What is measured (sampling, training, memory, MFU, the end-to-end pipeline, the data loader) is benchmarks/measure.py,
each measurement in a fresh subprocess, so that a peak memory is that measurement's alone.
"""
import json
import os
import platform
import subprocess
import sys
import time

import torch

import flow
from benchmarks.measure import DESIGNS, SAMPLE_STEPS
from common import ArgumentParser, fail

# Batches: (sampling, training) per preset and device kind; --batch / --train-batch override.
BATCHES = {"cpu": {"tiny": (8, 16), "cpu": (64, 128), "S": (16, 32), "B": (4, 8), "XL": (1, 2), "H": (1, 2)},
           "cuda": {"tiny": (64, 64), "cpu": (256, 256), "S": (64, 128), "B": (64, 64), "XL": (64, 64), "H": (64, 64)}}
MEMORY_BATCH = 64  # sampling memory is compared at the paper's sampling batch (below it, weights dominate)
PAPER_XL_A100_IMG_S = 22.7  # docs/METHOD.md, "Sizes": FlowTok-XL sampling throughput on an A100
# Done-when targets (issue 6), checked and reported at the end of a run.
MIN_SPEEDUP, MAX_TEXT_SHARE, MIN_MFU = 3.0, 0.25, 0.5


# -----------------------------------------------------------------------------
# The run: one subprocess per measurement, then a table

def run_worker(spec):
    """Run one measurement in a fresh Python; its result dict, or {'error': ...} with the worker's last line."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.measure", json.dumps(spec)],
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
