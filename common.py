"""
What train.py and evaluate.py (and the models' caches) need and no model owns: one-line user errors, devices and
torchrun's processes, atomic checkpoints that fail clearly and load no code, the EMA update, and the two kinds of
picture (image grid, loss curve).
"""
import argparse
import os
import pickle
import re
import sys
from contextlib import nullcontext

import torch

# -----------------------------------------------------------------------------
# Errors the user can fix: one line on stderr, exit code 1 (argparse's own usage errors exit with 2)


class UserError(Exception):
    """Raised for bad input: the message is the whole report, no traceback."""


def fail(message, code=1):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def read_lines(path, flag):
    """The lines of the UTF-8 text file a command-line flag names, or a UserError saying what is wrong with it."""
    if not os.path.isfile(path):
        raise UserError(f"{flag}: no file at {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return f.readlines()
    except UnicodeDecodeError:
        raise UserError(f"{flag}: {path} is not UTF-8 text") from None


def pick_device(flag):
    """--device: auto (CUDA, then Apple MPS, then CPU), cpu, cuda or mps -> torch.device; a missing GPU is a UserError."""
    if flag == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available()
                            else "cpu")
    if flag == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(flag)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the whole usage block first). Exit code 2."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


# -----------------------------------------------------------------------------
# Processes and devices (train.py): one process, or torchrun's; mixed precision on CUDA only

def setup_distributed(device_flag):
    """One process, or one of many under torchrun (RANK is set). Returns (rank, world, device)."""
    device_flag = pick_device(device_flag).type
    if "RANK" not in os.environ:
        return 0, 1, torch.device(device_flag)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if device_flag == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device(device_flag)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def teardown_distributed(world):
    """The end of setup_distributed: all processes leave together, so none tears gloo down under a peer."""
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def autocast_and_scaler(device):
    """bf16 autocast on CUDA where supported, else fp16 with a GradScaler; fp32 elsewhere (CPU bf16 is slow)."""
    if device.type != "cuda":
        return nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


# -----------------------------------------------------------------------------
# Checkpoints: one dict per task, written to a temp file and renamed over the old one, so that a run killed
# mid-write leaves the previous checkpoint intact.

def atomic_save(obj, path):
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise UserError(f"could not write checkpoint {path}: {e.strerror or e}; the previous checkpoint is "
                        f"unchanged. Free disk space or choose another --out-dir") from None


def load_checkpoint(path, expect_task=None, make_it=None):
    """Load a checkpoint dict on the CPU, or raise UserError saying what is wrong and how to fix it."""
    hint = f"; make it with: {make_it}" if make_it else ""
    if not os.path.exists(path):
        raise UserError(f"no checkpoint at {path}{hint}")
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory, not a checkpoint file{hint}")
    try:  # weights_only: tensors and plain values only; a pickle that names any other Python object is refused
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        code = re.search(r"GLOBAL (\S+)", str(e))
        if code is None:  # random bytes read as a pickle
            raise UserError(f"checkpoint {path} is unreadable (not a checkpoint); it may be corrupt. "
                            f"Delete it and train again{hint}") from None
        raise UserError(f"checkpoint {path} would run Python code ({code.group(1)}) when loaded: refused, nothing "
                        f"in it was run. Use a checkpoint you trained yourself{hint}") from None
    except Exception as e:  # a truncated zip, an unreadable file: all mean the same to the user
        raise UserError(f"checkpoint {path} is unreadable ({type(e).__name__}); it may be truncated or corrupt. "
                        f"Delete it and train again{hint}") from None
    if not isinstance(ck, dict) or "task" not in ck:
        raise UserError(f"{path} is not a flowtok checkpoint{hint}")
    if expect_task is not None and ck["task"] != expect_task:
        raise UserError(f"{path} is a '{ck['task']}' checkpoint, expected '{expect_task}'{hint}")
    return ck


def is_finished(out_dir, task):
    """Whether out_dir holds a finished checkpoint of task (train.py, the notebooks: what is already trained)."""
    path = os.path.join(out_dir, f"{task}.pt")
    return os.path.exists(path) and load_checkpoint(path, expect_task=task).get("finished", False)


def load_component(run, name, make_it=None):
    """One trained component (tokenizer, t2i, textae, i2t) of a run: RUN/NAME.pt as train.py writes it, or
    RUN/NAME/ as export.py writes it (model.safetensors + config.json: no pickle at all). Either way a dict with
    the checkpoint's "task", "model_config", "ema" (the weights), "step", "train_seconds" and "config"."""
    folder = os.path.join(run, name)
    if not os.path.isfile(os.path.join(folder, "model.safetensors")):
        return load_checkpoint(os.path.join(run, f"{name}.pt"), expect_task=name, make_it=make_it)
    import json
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            meta = json.load(f)
        weights = load_file(os.path.join(folder, "model.safetensors"))
    except (OSError, ValueError, SafetensorError) as e:  # missing or broken config.json, a broken tensor file
        raise UserError(f"exported {name} in {folder} is unreadable ({type(e).__name__}); export it again with "
                        f"python export.py") from None
    if not isinstance(meta, dict) or meta.get("task") != name or not {"model_config", "step"} <= meta.keys():
        raise UserError(f"{folder}/config.json is not an exported flowtok {name}; export it again with "
                        f"python export.py")
    return {**meta, "ema": weights}


# -----------------------------------------------------------------------------
# Exponential moving average of the weights

@torch.no_grad()
def ema_update(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model, for parameters; buffers are copied."""
    e_params = [p for p in ema.parameters()]
    m_params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(e_params, m_params, 1.0 - decay)
    for eb, mb in zip(ema.buffers(), model.buffers()):
        eb.copy_(mb)


# -----------------------------------------------------------------------------
# Pictures

def save_image_grid(images, nrow, path, labels=None):
    """images (B, 3, H, W) in [0, 1] -> a PNG grid with nrow images per row; labels: one string per row."""
    import numpy as np
    from PIL import Image, ImageDraw
    x = (images.detach().float().clamp(0, 1).cpu() * 255).round().byte()
    B, _, H, W = x.shape
    scale = max(1, 64 // H)  # small images are upscaled (nearest) so they can be looked at
    rows = (B + nrow - 1) // nrow
    pad = 2
    label_w = 0 if labels is None else 8 * max(len(s) for s in labels) + 8
    grid = Image.new("RGB", (label_w + nrow * (W * scale + pad) + pad, rows * (H * scale + pad) + pad), "white")
    for i in range(B):
        r, c = divmod(i, nrow)
        im = Image.fromarray(x[i].permute(1, 2, 0).numpy()).resize((W * scale, H * scale), Image.NEAREST)
        grid.paste(im, (label_w + pad + c * (W * scale + pad), pad + r * (H * scale + pad)))
    if labels is not None:
        draw = ImageDraw.Draw(grid)
        for r, s in enumerate(labels):
            draw.text((4, pad + r * (H * scale + pad) + H * scale // 2 - 5), s, fill="black")
    tmp = path + ".tmp.png"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        grid.save(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"could not write {path} ({e.strerror or e}); choose another path or free disk space") from None
    return np.asarray(grid)


def save_loss_curve(history, path, evals=()):
    """history: list of log dicts with 'step' and loss terms -> PNG, one log-scale panel per loss term;
    evals: list of dicts with 'step' and validation metrics, one linear panel each."""
    if not history:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [k for k in history[-1] if k == "loss" or k.startswith("loss_") or k in ("rec", "kl", "edge", "perceptual", "flow", "align", "ce")]
    metrics = [k for k in (evals[-1] if evals else {}) if k not in ("step", "train_seconds")]
    panels = [(k, history, "log") for k in keys] + [(k, evals, "linear") for k in metrics]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), squeeze=False)
    for ax, (k, rows, scale) in zip(axes[0], panels):
        ax.plot([h["step"] for h in rows], [h.get(k, float("nan")) for h in rows], marker="." if scale == "linear" else None)
        ax.set_yscale(scale)
        ax.set_title(k)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    try:
        fig.savefig(tmp, dpi=80)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"could not write {path} ({e.strerror or e}); free disk space or choose another --out-dir") \
            from None
    finally:
        plt.close(fig)
