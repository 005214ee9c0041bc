"""
Train a flowtok model. One file, one loop; each --task (tasks.py, text_tasks.py) only says what its model and loss are.

    --task tokenizer   the 1D image tokenizer (tokenizer.py)                     -> out/tokenizer.pt
    --task t2i         text-to-image: projector + flow (projector.py, flow.py)   -> out/t2i.pt
                       on the frozen tokenizer in the same --out-dir
    --task textae      text autoencoder: projector + text decoder (text_decoder.py) -> out/textae.pt
    --task i2t         image-to-text: the flow from image tokens to text tokens  -> out/i2t.pt
                       on the frozen tokenizer and text autoencoder in the same --out-dir
A task whose frozen inputs are missing trains them first, each with its own defaults and the flags given for it.

Launch:
    1 CPU or 1 GPU (auto-detected: cuda, then mps, then cpu):
        python train.py --task tokenizer
    8 GPUs on one machine:
        torchrun --standalone --nproc_per_node=8 train.py --task tokenizer --preset paper
    2 nodes x 8 GPUs (run on each node, node_rank 0 and 1; MASTER is node 0's address):
        torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=MASTER --master_port=29500 \
            train.py --task tokenizer --preset paper
    2 CPU processes (gloo), e.g. to check the distributed path on a laptop:
        torchrun --standalone --nproc_per_node=2 train.py --task tokenizer

--batch-size is the global batch: each of the W processes takes batch_size / W samples of it.
A killed run continues with --resume from the last checkpoint in --out-dir. Every random draw is a pure
function of (seed, rank, step), and the data order a pure function of (seed, epoch), so a resumed run
repeats exactly the steps an uninterrupted run would have taken: nothing but the weights, the optimizer
and the step needs saving for that.
"""
import argparse
import copy
import functools
import json
import math
import os
import sys
import time

import torch

import real_data
import flow
import guards
import projector as pj
import tasks
import text_tasks
import tokenizer as tok
from common import (ArgumentParser, UserError, atomic_save, autocast_and_scaler, ema_update, fail, is_finished,
                    load_checkpoint, save_loss_curve, setup_distributed, teardown_distributed)

TASK_CLASSES = {"tokenizer": tasks.TokenizerTask, "t2i": tasks.T2ITask, "textae": text_tasks.TextAETask,
                "i2t": text_tasks.I2TTask}
# Each task's recipe (a flag given on the command line overrides its entry) and its frozen inputs, which are
# trained first if missing: the task classes carry them.
TASK_DEFAULTS = {t: c.DEFAULTS for t, c in TASK_CLASSES.items()}
PREREQUISITES = {t: c.NEEDS for t, c in TASK_CLASSES.items() if c.NEEDS}
TASKS = tuple(TASK_DEFAULTS)
# Flags every task reads (a task's own are its class's FLAGS); a prerequisite trained first shares SHARED_FLAGS:
GENERIC_FLAGS = {"task", "out_dir", "data", "preset", "num_train", "batch_size", "max_steps", "lr", "min_lr",
                 "lr_schedule", "warmup_steps", "weight_decay", "beta2", "grad_clip", "ema_decay", "seed", "device",
                 "compile", "resume", "skip_nonfinite", "log_every", "save_every", "sample_every", "stop_at_step"}
SHARED_FLAGS = ("data", "seed", "device", "num_train")
SAME_FOR_ALL = {"num_tokens"}  # a flag for several prerequisites at once means the same to each (others: an error)
FROZEN_AS = {"num_tokens": "num_latents"}  # a flag whose trained value is read from the model config by this name


def get_args(argv=None):
    # allow_abbrev=False: which flags were given is read off argv (below), so every flag is spelled out in full
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                       allow_abbrev=False, epilog="Per-task defaults (a flag overrides):\n" + "\n".join(
                           f"  {t}: {d}" for t, d in TASK_DEFAULTS.items()))
    p.add_argument("--task", required=True, choices=TASKS, help="what to train")
    p.add_argument("--out-dir", default="out", help="checkpoints, logs and pictures go here (default: out)")
    p.add_argument("--data", default="shapes",
                   help="'shapes' (embedded, rendered on the fly), a COCO captions_*.json or COCO root, or a folder "
                        "of images with .txt captions or a captions.jsonl")
    p.add_argument("--preset", help=f"model size preset (tokenizer: {', '.join(tok.PRESETS)}; "
                                    f"t2i, textae, i2t: {', '.join(flow.PRESETS)})")
    p.add_argument("--image-size", type=int, help="override the preset's image resolution")
    p.add_argument("--num-tokens", type=int, help="override N, the number of latent tokens (= text length)")
    p.add_argument("--num-train", type=int, help="use only the first N training samples")
    p.add_argument("--batch-size", type=int, help="global batch size (split across processes)")
    p.add_argument("--max-steps", type=int, help="optimizer steps to train for")
    p.add_argument("--lr", type=float, help="peak learning rate (AdamW)")
    p.add_argument("--min-lr", type=float, help="final learning rate of the cosine schedule")
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), help="after the linear warm-up")
    p.add_argument("--warmup-steps", type=int, help="linear learning-rate warm-up")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--beta2", type=float, help="AdamW beta2 (beta1 is 0.9)")
    p.add_argument("--grad-clip", type=float, help="clip the global gradient norm (0: off)")
    p.add_argument("--ema-decay", type=float, help="EMA of the weights (warmed up as min(decay, (1+s)/(10+s)))")
    p.add_argument("--kl-weight", type=float, help="weight of the KL term (t2i: gamma1, on the text projector; textae: "
                                                            "on its projector, 0 in the paper)")
    p.add_argument("--align-weight", type=float, help="t2i: weight of the text alignment loss (gamma2)")
    p.add_argument("--mean-weight", type=float, help="textae: weight of writing a caption from the mean Z_T of several "
                                                     "captions of its image (0: plain autoencoder)")
    p.add_argument("--text-encoder", default=pj.DEFAULT_TEXT_ENCODER,
                   help="t2i, textae: frozen text encoder: the embedded all-minilm-l6-v2, or a local folder / local Hugging "
                        "Face cache name of a CLIP text model (e.g. openai/clip-vit-large-patch14)")
    p.add_argument("--cfg-prob", type=float, default=flow.CFG_FLAG_PROB,
                   help="t2i, i2t: probability of the CFG indicator flag (flagged targets are shuffled)")
    p.add_argument("--t-dist", choices=flow.T_DISTRIBUTIONS,
                   help="t2i, i2t: how training draws t along the path (t2i: uniform, i2t: early = u^2; logit-normal "
                        "is the paper's, and it barely trains the start of the path: README, Design choices)")
    p.add_argument("--source-noise", type=float, default=0.0,
                   help="i2t: std of Gaussian noise added to the image tokens (flow units), in training and sampling")
    p.add_argument("--gather-negatives", action="store_true",
                   help="t2i under torchrun: alignment-loss negatives from every process's batch")
    p.add_argument("--edge-weight", type=float, help="tokenizer: weight of the L2 between image gradients (edges)")
    p.add_argument("--hue-augment", type=float, help="tokenizer: probability of turning a training image's hue by a "
                                                     "random angle (colour apart from shape)")
    p.add_argument("--word-dropout", type=float, help="textae: share of the decoder's input tokens blanked in training "
                                                      "(it then reads the caption from Z_T)")
    p.add_argument("--recolor", type=float, help="textae, Shapes: share of the training images whose captions get a "
                                                 "random other colour word (text only: every colour meets every shape)")
    p.add_argument("--perceptual", metavar="PATH", help="tokenizer: a local feature network (torch.export .pt2 or "
                   "TorchScript; images in [0, 1] -> features) for a perceptual loss; nothing is downloaded")
    p.add_argument("--perceptual-weight", type=float, default=1.0, help="weight of the perceptual loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/TASK.pt")
    p.add_argument("--skip-nonfinite", action="store_true",
                   help=f"skip (and count) a step whose loss or gradients are NaN or inf instead of stopping; "
                        f"{guards.MAX_SKIPS_IN_A_ROW} in a row still stop the run")
    p.add_argument("--log-every", type=int, default=50, help="steps between log lines")
    p.add_argument("--save-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--sample-every", type=int, default=500, help="steps between validation metrics and preview "
                                                                  "pictures")
    p.add_argument("--stop-at-step", type=int, help="save and exit at this step, as a planned interruption "
                                                      "(the schedule still runs to --max-steps)")
    args = p.parse_args(argv)
    if args.recolor and args.data != "shapes":
        p.error(f"--recolor swaps Shapes colour words and applies to --data shapes, not {args.data}")
    if args.task == "textae" and args.data != "shapes" and args.recolor is None:
        args.recolor = 0.0  # its default is for Shapes' colour words; other captions are left as they are
    for k, v in TASK_DEFAULTS[args.task].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    presets = tok.PRESETS if args.task == "tokenizer" else flow.PRESETS
    if args.preset not in presets:
        p.error(f"--preset {args.preset!r} is not a {args.task} preset; choose one of {', '.join(presets)}")
    guards.check_flag_values(args, p.error)
    given = {a.dest for a in p._actions if a.dest in vars(args) and a.option_strings and any(
        x == o or x.startswith(o + "=") for o in a.option_strings for x in (sys.argv[1:] if argv is None else argv))}
    task = TASK_CLASSES[args.task]
    for dest in sorted(given - GENERIC_FLAGS - task.FLAGS):  # not this task's: one missing prerequisite's, or wrong
        readers = [t for t, c in TASK_CLASSES.items() if dest in c.FLAGS]
        needs = [n for n in task.NEEDS if n in readers]
        if not needs or (len(needs) > 1 and dest not in SAME_FOR_ALL):
            p.error(f"--{dest.replace('_', '-')} applies to --task {' and '.join(readers)}, not {args.task}"
                    + (" (train those one at a time)" if needs else ""))
    args.forward = sorted(given - GENERIC_FLAGS - task.FLAGS)  # for the prerequisites (plan); not saved
    return args


def plan(args):
    """The runs this command makes, its missing prerequisites first (each with the shared flags and the flags given
    for it), all checked before any work. A flag given for a prerequisite that is already trained must agree with it."""
    runs = []
    for need in TASK_CLASSES[args.task].NEEDS:
        mine = [d for d in args.forward if d in TASK_CLASSES[need].FLAGS]
        if is_finished(args.out_dir, need):
            ck = load_checkpoint(os.path.join(args.out_dir, f"{need}.pt"), expect_task=need)
            for d in mine:
                have = ck["model_config"].get(FROZEN_AS.get(d, d), ck["config"].get(d))
                if have != getattr(args, d):
                    raise UserError(f"--{d.replace('_', '-')} {getattr(args, d)} contradicts the trained {need} in "
                                    f"{args.out_dir} ({have}); leave it out, or train afresh in another --out-dir")
            continue
        argv = ["--task", need, "--out-dir", args.out_dir, "--resume"] + [
            x for d in SHARED_FLAGS + tuple(mine) if getattr(args, d) is not None
            for x in (f"--{d.replace('_', '-')}", str(getattr(args, d)))]
        runs.append(get_args(argv))
    for a in runs + [args]:  # what would fail minutes in fails now
        guards.check_inputs(a, TASK_CLASSES[a.task].FLAGS)
        vars(a).pop("forward")
    return runs + [args]


# -----------------------------------------------------------------------------
# The schedule and the data order

def learning_rate(args, step):
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    if args.lr_schedule == "constant":
        return args.lr
    progress = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def step_seed(args, rank, step):
    return (args.seed * 1_000_003 + rank * 7919 + step) % (2 ** 63)


@functools.lru_cache(maxsize=2)
def epoch_permutation(n, seed, epoch):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_777 + epoch))


def global_batch_indices(n, batch_size, step, seed):
    """Indices of the global batch at `step`: consecutive slices of a per-epoch random permutation."""
    epoch, k = divmod(step, max(1, n // batch_size))
    return epoch_permutation(n, seed, epoch)[k * batch_size: (k + 1) * batch_size]


# -----------------------------------------------------------------------------
# The loop

def train(args, rank=0, world=1, device=torch.device("cpu")):
    master = rank == 0
    if args.batch_size % world:
        raise UserError(f"--batch-size {args.batch_size} must be divisible by the number of processes ({world})")
    ckpt_path = os.path.join(args.out_dir, f"{args.task}.pt")
    if master:
        guards.check_out_dir(args.out_dir, ckpt_path)
    ck = guards.checkpoint_to_resume(args, ckpt_path)
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    task = TASK_CLASSES[args.task](args)
    task.to(device)
    guards.check_same_model(ck, task, ckpt_path)

    # Data: prepared once into out/cache (images as one uint8 tensor; the flows add latents and text embeddings).
    train_set = real_data.open_dataset(args.data, "train", size=task.image_size, seed=args.seed, n=args.num_train)
    val_set = real_data.open_dataset(args.data, "val", size=task.image_size, seed=args.seed)

    def master_first(make):
        """Rank 0 computes (and caches) first; the other ranks then read its cache."""
        out = make() if master else None
        if world > 1:
            torch.distributed.barrier()
        return out if master else make()

    n_train = task.prepare(train_set, val_set, os.path.join(args.out_dir, "cache"), master_first)

    model = task.model.to(device)  # built by the task's constructor, or by prepare() when it depends on the data
    ema = copy.deepcopy(model).requires_grad_(False)  # the weights that get saved for sampling
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, args.beta2))
    autocast, scaler = autocast_and_scaler(device)

    step, history, evals, train_seconds = 0, [], [], 0.0
    saved_step = None  # the step of the last checkpoint written
    from tqdm import tqdm
    nonfinite = guards.NonfiniteSteps(args.skip_nonfinite, ckpt_path, say=tqdm.write if master else lambda s: None)
    if ck is not None:
        guards.load_resumed(ck, model, ema, opt, scaler, ckpt_path)
        step, history, evals, train_seconds = ck["step"], ck["history"], ck["evals"], ck["train_seconds"]
        saved_step, nonfinite.skipped = step, ck.get("skipped_steps", 0)
        ck = None  # its tensors are copied into the model and optimizer: free them
        if master:
            print(f"resuming {ckpt_path} at step {step}")
    elif args.resume and master:
        print(f"--resume: no checkpoint at {ckpt_path} yet, starting from scratch")

    if master:
        skipped = getattr(train_set, "skipped", 0)
        print(f"data: {args.data}: {len(train_set)} training images at {task.image_size}px"
              + (f", skipped {skipped} unreadable or uncaptioned files" if skipped else ""))
        print(f"model: {sum(p.numel() for p in params) / 1e6:.2f}M trainable parameters; device {device}, "
              f"{world} process(es), global batch {args.batch_size}")

    train_model = model
    if args.compile:
        train_model = torch.compile(model)
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)

    def save(final=False):
        nonlocal saved_step
        if not master:
            return
        atomic_save({"task": args.task, "config": vars(args), "model_config": task.model_config,
                     "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                     "scaler": scaler.state_dict() if scaler is not None else None,
                     "step": step, "history": history, "evals": evals, "finished": final,
                     "skipped_steps": nonfinite.skipped, "train_seconds": train_seconds + time.time() - t_start},
                    ckpt_path)
        saved_step = step
        save_loss_curve(history, os.path.join(args.out_dir, f"{args.task}_loss.png"), evals)

    log_path = os.path.join(args.out_dir, f"{args.task}_log.jsonl")
    if master:
        guards.start_log(log_path, step)
    local_bs = args.batch_size // world
    bar = tqdm(total=args.max_steps, initial=step, disable=not master, dynamic_ncols=True, desc=args.task)
    t_start = t_last = time.time()  # train_seconds: wall time spent in this loop, summed over resumes
    n_last, data_seconds = 0, 0.0  # data_seconds: time in task.batch since the last log line (the data loader)
    model.train()
    try:  # whatever stops the loop (an error, Ctrl-C), the progress bar ends its line before the message
        while step < args.max_steps:
            torch.manual_seed(step_seed(args, rank, step))
            idx = global_batch_indices(n_train, args.batch_size, step, args.seed)
            idx = idx[rank * local_bs:(rank + 1) * local_bs].sort().values  # this rank's share; sorted reads
            t_data = time.perf_counter()
            batch = task.batch(idx)
            data_seconds += time.perf_counter() - t_data
            lr = learning_rate(args, step)
            for g in opt.param_groups:
                g["lr"] = lr
            with autocast():
                loss, stats = task.loss(train_model, batch)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip if args.grad_clip > 0 else float("inf"))
            if not nonfinite.fine(loss, stats, gnorm, step, saved_step, check_grad=scaler is None):
                step += 1  # skipped (--skip-nonfinite): the weights are untouched
                bar.update(1)
                continue
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            ema_update(ema, model, min(args.ema_decay, (1 + step) / (10 + step)))
            step += 1
            n_last += args.batch_size
            bar.update(1)
            if step % args.log_every == 0 or step == args.max_steps:
                dt = time.time() - t_last
                rec = {"step": step, "loss": loss.item(), **{k: v.item() for k, v in stats.items()}, "lr": lr,
                       "grad_norm": gnorm.item(), **task.pop_log(), "samples_per_s": n_last / dt,
                       "data_share": data_seconds / dt, "skipped_steps": nonfinite.skipped, "time": time.time()}
                t_last, n_last, data_seconds = time.time(), 0, 0.0
                history.append(rec)
                if master:
                    bar.set_postfix(loss=f"{rec['loss']:.4g}", sps=f"{rec['samples_per_s']:.0f}")
                    with open(log_path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
            if master and (step % args.sample_every == 0 or step == args.max_steps):
                metrics = task.validate(ema, os.path.join(args.out_dir, f"{args.task}_preview.png"))
                rec = {"step": step, **metrics, "train_seconds": train_seconds + time.time() - t_start}
                evals.append(rec)
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
            if step == args.max_steps:
                break
            if step % args.save_every == 0 or step == args.stop_at_step:
                save()
            if step == args.stop_at_step:
                bar.close()
                if master:
                    print(f"stopped at step {step} as asked; continue with --resume")
                return
    finally:
        bar.close()
    if master:
        extra = task.finish(ema)
        save(final=True)
        print(f"done: {ckpt_path}" + (f" ({', '.join(f'{k}={v:.4g}' for k, v in extra.items())})" if extra else ""))


def main(argv=None):
    args = get_args(argv)
    rank, world = 0, 1
    try:
        runs = plan(args)
        rank, world, device = setup_distributed(args.device)
        for a in runs:  # the flows run on frozen networks: a fresh clone trains those first
            if rank == 0 and a is not args:
                print(f"notice: no trained {a.task} in {args.out_dir}; training it first "
                      f"(python train.py --task {a.task} --out-dir {args.out_dir}), then {args.task}")
            train(a, rank, world, device)
        teardown_distributed(world)
    except (UserError, real_data.DataError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted; continue with --resume")
    except RuntimeError as e:
        if world > 1 and guards.is_peer_failure(e):  # one line per surviving process; torchrun names the dead one
            fail(guards.peer_failure_line(rank, world, e, args.out_dir))
        raise


if __name__ == "__main__":
    main()
