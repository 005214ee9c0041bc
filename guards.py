"""
What keeps a training run safe, beside the loop rather than inside it (train.py calls these): an out-dir that
is writable and free of a killed run's leftovers, a checkpoint that is never overwritten by accident and is
refused before any work when it cannot be resumed, a log that holds each step once, a one-line report (or a
counted skip) for a non-finite step, and the one-line report of a torchrun peer that died.
"""
import glob
import json
import os

import torch

from common import UserError, load_checkpoint

MAX_SKIPS_IN_A_ROW = 20  # --skip-nonfinite gives up after this many consecutive non-finite steps: the run diverged


def check_flag_values(args, error):
    """Flag values out of range: error(message) (argparse's, exit code 2) before anything else happens."""
    if args.word_dropout is not None and not 0 <= args.word_dropout < 1:
        error(f"--word-dropout must be in [0, 1), got {args.word_dropout}")
    if args.recolor is not None and not 0 <= args.recolor <= 1:
        error(f"--recolor must be in [0, 1], got {args.recolor}")
    if args.source_noise < 0:
        error(f"--source-noise must be >= 0, got {args.source_noise}")
    if not 0 <= args.cfg_prob < 1:
        error(f"--cfg-prob must be in [0, 1), got {args.cfg_prob}")
    for name in ("batch_size", "max_steps", "log_every", "save_every", "sample_every"):
        if getattr(args, name) <= 0:
            error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.num_train is not None and args.num_train <= 0:
        error(f"--num-train must be positive, got {args.num_train}")
    if args.lr <= 0:
        error(f"--lr must be positive, got {args.lr}")


def check_inputs(args, flags):
    """The files a run will read, checked before any run of the command starts: the data, and the text encoder
    and perceptual network where the task reads them (`flags`: the task's FLAGS)."""
    from projector import resolve_encoder_path
    from real_data import check_data_path
    from tokenizer import check_feature_net
    check_data_path(args.data)
    if "text_encoder" in flags:
        resolve_encoder_path(args.text_encoder)
    if "perceptual" in flags and args.perceptual:
        check_feature_net(args.perceptual)


def check_out_dir(out_dir, ckpt_path):
    """Make the out-dir, prove it writable before any work is done, and clear the leftovers of a checkpoint write
    that a killed run left unfinished (the checkpoint itself is untouched: it is only ever replaced whole)."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"cannot write to --out-dir {out_dir} ({e.strerror or e}); choose another --out-dir") from None
    for tmp in glob.glob(glob.escape(ckpt_path) + ".tmp*"):
        os.remove(tmp)
        print(f"note: removed {tmp}, an unfinished checkpoint write of a killed run")


def checkpoint_to_resume(args, ckpt_path):
    """The checkpoint dict --resume continues (None for a fresh run), checked before any work is done: a run is
    never overwritten without --resume, and an unreadable or foreign checkpoint is one line."""
    if not args.resume and os.path.exists(ckpt_path):
        raise UserError(f"{ckpt_path} already exists; continue it with --resume, or start afresh in another --out-dir "
                        f"(or delete it first)")
    return load_checkpoint(ckpt_path, expect_task=args.task) if args.resume and os.path.exists(ckpt_path) else None


def check_same_model(ck, task, ckpt_path):
    """A checkpoint to resume must hold the model the flags build (same config), or it is one line."""
    saved, wanted = (ck or {}).get("model_config"), getattr(task, "model_config", None)
    if isinstance(saved, dict) and isinstance(wanted, dict) and saved != wanted:
        raise UserError(f"{ckpt_path} holds a model of another shape ({config_difference(saved, wanted)}); resume "
                        f"with the flags it was trained with, or train afresh in another --out-dir")


def load_resumed(ck, model, ema, opt, scaler, ckpt_path):
    """Copy a checkpoint's weights and optimizer state in; one line if they do not fit."""
    try:
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
    except (RuntimeError, ValueError, KeyError):
        raise UserError(f"{ckpt_path} holds a model of another shape ({ck.get('model_config')}); resume "
                        f"with the flags it was trained with, or train afresh in another --out-dir") from None
    if scaler is not None and ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])


def config_difference(saved, wanted, prefix=""):
    """'key: saved vs wanted' for the first few entries where two model configs differ."""
    diffs = []
    for k in sorted(set(saved) | set(wanted), key=str):
        a, b = saved.get(k), wanted.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_difference(a, b, f"{prefix}{k}.").split("; ") if a != b else []
        elif a != b:
            diffs.append(f"{prefix}{k}: {a!r} saved, {b!r} asked for")
    return "; ".join(d for d in diffs[:3] if d)


def start_log(log_path, step):
    """A fresh run starts a fresh log; a resumed one repeats the steps after its checkpoint, so the lines a killed
    run wrote for them are dropped."""
    if not os.path.exists(log_path):
        return
    if step == 0:
        os.remove(log_path)
        return
    with open(log_path) as f:
        keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(log_path + ".tmp", "w") as f:
        f.writelines(keep)
    os.replace(log_path + ".tmp", log_path)


class NonfiniteSteps:
    """A step whose loss or gradient norm is NaN or inf: stop with one line, or with --skip-nonfinite skip it and
    count it (MAX_SKIPS_IN_A_ROW in a row still stop). `skipped` is saved with the checkpoint and logged."""

    def __init__(self, skip, ckpt_path, skipped=0, say=print):
        self.skip, self.ckpt_path, self.skipped, self.in_a_row, self.say = skip, ckpt_path, skipped, 0, say

    def fine(self, loss, stats, gnorm, step, saved_step, check_grad=True):
        """True for a finite step. The gradient norm is the all-reduced one under DDP, so every process decides
        alike; under fp16 (check_grad False) the GradScaler skips inf gradients itself."""
        if torch.isfinite(loss) and (not check_grad or torch.isfinite(gnorm)):
            self.in_a_row = 0
            return True
        if not self.skip or self.in_a_row >= MAX_SKIPS_IN_A_ROW:
            raise UserError(self.report(loss, stats, gnorm, step, saved_step)
                            + (f" ({self.in_a_row} steps in a row were skipped)" if self.in_a_row else ""))
        self.skipped, self.in_a_row = self.skipped + 1, self.in_a_row + 1
        self.say(f"skipped step {step}: non-finite loss or gradients ({self.skipped} skipped so far)")
        return False

    def report(self, loss, stats, gnorm, step, saved_step):
        """The one line that says what became non-finite, where, and what to do."""
        bad = [k for k, v in stats.items() if not torch.isfinite(v)] or (
            ["the gradient norm"] if torch.isfinite(loss) else ["the loss"])
        terms = ", ".join(f"{k}={v.item():.4g}" for k, v in stats.items())
        last = (f"the last good checkpoint is {self.ckpt_path} (step {saved_step})" if saved_step is not None
                else "no checkpoint had been written yet")
        return (f"non-finite {', '.join(bad)} at step {step} (loss={loss.item():.4g}, {terms}, grad_norm="
                f"{gnorm.item():.4g}); {last}: resume from it with --resume and a lower --lr, or add "
                f"--skip-nonfinite to skip such steps")


def is_peer_failure(e):
    """An error from the collective layer: another process of the torchrun job died or hung up."""
    return isinstance(e, torch.distributed.DistError) or any(w in str(e) for w in ("gloo", "NCCL", "Connection reset"))


def peer_failure_line(rank, world, e, out_dir):
    return (f"process {rank} of {world} lost its peers ({str(e).splitlines()[0][:120]}); the checkpoint in "
            f"{out_dir} is whole: rerun the same command with --resume")
