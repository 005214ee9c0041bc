"""
Train a flowtok model. One file, one loop; each --task only says what its model and loss are.

    --task tokenizer   the 1D image tokenizer (tokenizer.py)                     -> out/tokenizer.pt
    --task t2i         text-to-image: projector + flow (projector.py, flow.py)   -> out/t2i.pt
                       on the frozen tokenizer in the same --out-dir (trained first if it is missing)

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
import time
from contextlib import nullcontext

import torch

import data
import flow
import judge
import projector as pj
import tokenizer as tok
from common import (ArgumentParser, UserError, atomic_save, load_checkpoint, ema_update, save_loss_curve, save_image_grid,
                    fail, pick_device)
from layers import gaussian_sample

# -----------------------------------------------------------------------------
# Defaults per task: the recipes. A flag given on the command line overrides its entry here.

TASK_DEFAULTS = {
    "tokenizer": dict(preset="cpu", batch_size=16, max_steps=5000, lr=1e-3, min_lr=1e-5, lr_schedule="cosine",
                      warmup_steps=100, weight_decay=0.0, beta2=0.95, grad_clip=1.0, ema_decay=0.999,
                      kl_weight=1e-6, edge_weight=1.0),
    "t2i": dict(preset="cpu", batch_size=128, max_steps=2600, lr=1e-3, min_lr=1e-5, lr_schedule="cosine",
                warmup_steps=200, weight_decay=0.03, beta2=0.95, grad_clip=1.0, ema_decay=0.999,
                kl_weight=1e-4, align_weight=1.0),
}
TASKS = tuple(TASK_DEFAULTS)


def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                                epilog="Per-task defaults (a flag overrides):\n" + "\n".join(
                                    f"  {t}: {d}" for t, d in TASK_DEFAULTS.items()))
    p.add_argument("--task", required=True, choices=TASKS, help="what to train")
    p.add_argument("--out-dir", default="out", help="checkpoints, logs and pictures go here (default: out)")
    p.add_argument("--data", default="shapes",
                   help="'shapes' (embedded, rendered on the fly), a COCO captions_*.json or COCO root, or a folder "
                        "of images with .txt captions or a captions.jsonl")
    p.add_argument("--preset", help=f"model size preset (tokenizer: {', '.join(tok.PRESETS)}; "
                                    f"t2i: {', '.join(flow.PRESETS)})")
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
    p.add_argument("--kl-weight", type=float, help="weight of the KL term (t2i: gamma1, on the text projector)")
    p.add_argument("--align-weight", type=float, help="t2i: weight of the text alignment loss (gamma2)")
    p.add_argument("--text-encoder", default=pj.DEFAULT_TEXT_ENCODER,
                   help="t2i: frozen text encoder: the embedded all-minilm-l6-v2, or a local folder / local Hugging "
                        "Face cache name of a CLIP text model (e.g. openai/clip-vit-large-patch14)")
    p.add_argument("--cfg-prob", type=float, default=flow.CFG_FLAG_PROB,
                   help="t2i: probability of the CFG indicator flag (flagged targets are shuffled)")
    p.add_argument("--t-dist", choices=flow.T_DISTRIBUTIONS, default="uniform",
                   help="t2i: how training draws t along the path (default: uniform; logit-normal is the paper's, "
                        "and with a text source it barely trains the start of the path: README, Results)")
    p.add_argument("--gather-negatives", action="store_true",
                   help="t2i under torchrun: alignment-loss negatives from every process's batch")
    p.add_argument("--edge-weight", type=float, help="tokenizer: weight of the L2 between image gradients (edges)")
    p.add_argument("--perceptual", metavar="PATH", help="tokenizer: a local feature network (torch.export .pt2 or "
                   "TorchScript; images in [0, 1] -> features) for a perceptual loss; nothing is downloaded")
    p.add_argument("--perceptual-weight", type=float, default=1.0, help="weight of the perceptual loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/TASK.pt")
    p.add_argument("--log-every", type=int, default=50, help="steps between log lines")
    p.add_argument("--save-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--sample-every", type=int, default=500, help="steps between validation metrics and preview "
                                                                  "pictures")
    p.add_argument("--stop-at-step", type=int, help="save and exit at this step, as a planned interruption "
                                                      "(the schedule still runs to --max-steps)")
    args = p.parse_args(argv)
    for k, v in TASK_DEFAULTS[args.task].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    presets = {"tokenizer": tok.PRESETS, "t2i": flow.PRESETS}[args.task]
    if args.preset not in presets:
        p.error(f"--preset {args.preset!r} is not a {args.task} preset; choose one of {', '.join(presets)}")
    if not 0 <= args.cfg_prob < 1:
        p.error(f"--cfg-prob must be in [0, 1), got {args.cfg_prob}")
    for name in ("batch_size", "max_steps", "log_every", "save_every", "sample_every"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.num_train is not None and args.num_train <= 0:
        p.error(f"--num-train must be positive, got {args.num_train}")
    if args.lr <= 0:
        p.error(f"--lr must be positive, got {args.lr}")
    return args


# -----------------------------------------------------------------------------
# Processes and devices

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


def autocast_and_scaler(device):
    """bf16 autocast on CUDA where supported, else fp16 with a GradScaler; fp32 elsewhere (CPU bf16 is slow)."""
    if device.type != "cuda":
        return nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


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
# Tasks: each builds its model and says how a batch becomes a loss

def tokenizer_config(args):
    cfg = tok.TokenizerConfig(**vars(tok.PRESETS[args.preset]))
    if args.image_size:
        cfg.image_size = args.image_size
    if args.num_tokens:
        cfg.num_latents = args.num_tokens
    if cfg.image_size % cfg.patch_size:
        raise UserError(f"--image-size {cfg.image_size} is not a multiple of the patch size {cfg.patch_size}")
    return cfg


def load_judge_if_there(out_dir, val_set, n_val, device):
    """With a Shapes judge already in the out-dir (evaluate.py makes it; it is never trained here), validation
    also reports what the judge reads off the pictures. Returns (judge or None, labels of the first n_val)."""
    path = os.path.join(out_dir, judge.judge_name(val_set.size))
    if not (isinstance(val_set, data.ShapesDataset) and os.path.exists(path)):
        return None, None
    labels = judge.targets([data.sample_params("val", i, val_set.seed)[0] for i in range(n_val)])
    return judge.load_or_train(out_dir, val_set.size).to(device), labels


class TokenizerTask:
    """Reconstruction: L2 + kl_weight * KL. Previews: real images over their EMA reconstructions."""

    def __init__(self, args):
        self.args = args
        cfg = tokenizer_config(args)
        self.model = tok.Tokenizer(cfg)
        self.model_config = vars(cfg)
        self.image_size = cfg.image_size
        self.perceptual = None
        if args.perceptual:
            if not os.path.isfile(args.perceptual):
                raise UserError(f"--perceptual: no file at {args.perceptual}; give a feature network saved with "
                                f"torch.export.save (or TorchScript's torch.jit.save)")
            self.perceptual = load_feature_net(args.perceptual)

    def to(self, device):
        self.device = device
        if self.perceptual is not None:
            self.perceptual.to(device)

    def prepare(self, train_set, val_set, cache, master_first):
        """Load the data; returns the number of training samples."""
        self.images = master_first(lambda: data.image_tensor(train_set, cache_dir=cache, desc="train set"))
        self.val_images = torch.stack([val_set[i]["image"] for i in range(min(256, len(val_set)))]).to(self.device)
        self.judge, self.val_truth = load_judge_if_there(self.args.out_dir, val_set, len(self.val_images), self.device)
        return len(self.images)

    def batch(self, idx):
        return {"image": torch.as_tensor(self.images[idx.numpy()]).to(self.device).float().div_(255.0)}

    def loss(self, model, batch):
        loss, stats, _ = model(batch["image"], kl_weight=self.args.kl_weight, perceptual=self.perceptual,
                               perceptual_weight=self.args.perceptual_weight, edge_weight=self.args.edge_weight)
        return loss, stats

    def pop_log(self):
        return {}

    @torch.no_grad()
    def validate(self, ema, path):
        """PSNR of EMA reconstructions of validation images; the first 8 drawn over their reconstructions."""
        images = self.val_images
        recon = torch.cat([ema.decode(ema.encode(x)[0]) for x in images.split(128)])
        save_image_grid(torch.cat([images[:8], recon[:8].clamp(0, 1)]), nrow=8, path=path)
        out = {"val_psnr": tok.psnr(recon, images).mean().item()}
        if self.judge is not None:  # how well the judge reads the reconstructions: the ceiling for t2i
            _, pred = judge.predict(self.judge, recon.clamp(0, 1))
            out.update({f"val_recon_{k}": v for k, v in judge.accuracy(pred.cpu(), self.val_truth).items()})
        return out

    @torch.no_grad()
    def finish(self, ema):
        """Measure the latent scale factor on training images and store it in the (EMA) weights."""
        x = self.images[: min(len(self.images), 2048)].to(self.device).float() / 255.0
        ema.latent_scale.fill_(tok.measure_latent_scale(ema, x).item())
        return {"latent_scale": ema.latent_scale.item()}


def load_feature_net(path):
    """A frozen feature network from a local file: torch.export (.pt2), else TorchScript. Never downloads."""
    import logging
    import zipfile
    if not zipfile.is_zipfile(path):  # both formats are zip archives
        raise UserError(f"--perceptual: {path} is neither a torch.export nor a TorchScript file")
    log = logging.getLogger("torch.export")
    level = log.level
    log.setLevel(logging.CRITICAL)  # a failed torch.export.load logs a traceback; we try TorchScript quietly
    try:
        net = torch.export.load(path).module()
    except Exception:
        try:
            net = torch.jit.load(path, map_location="cpu").eval()
        except Exception as e:
            raise UserError(f"--perceptual: {path} is neither a torch.export nor a TorchScript file "
                            f"({type(e).__name__})") from None
    finally:
        log.setLevel(level)
    for p in net.parameters():
        p.requires_grad_(False)  # frozen; gradients still flow to the images it is given
    return net


T_BINS = 5  # the flow loss is logged per t in [0, 0.2), [0.2, 0.4), ...: where along the path the model struggles
SAMPLE_STEPS, SAMPLE_CFG = 20, 2.0  # the preview grid's Euler steps and CFG scale (FLOWTOK.md: 20 steps, s = 2)


def load_frozen_tokenizer(out_dir):
    path = os.path.join(out_dir, "tokenizer.pt")
    ck = load_checkpoint(path, expect_task="tokenizer", make_it=f"python train.py --task tokenizer --out-dir {out_dir}")
    if not ck.get("finished"):
        raise UserError(f"{path} is an unfinished tokenizer run; finish it with "
                        f"python train.py --task tokenizer --out-dir {out_dir} --resume")
    return tok.from_checkpoint(ck), tok.fingerprint(ck)


class T2ITask:
    """Text-to-image (FLOWTOK.md): projector + alignment head + flow, trained jointly with
    L = L_flow + kl_weight * L_kl + align_weight * L_align on two frozen inputs, both computed once and cached:
    the text encoder's caption embeddings and the tokenizer's posterior (mean, logvar) of every training image.
    Each step draws a fresh image latent from the cached posterior. Previews: a grid of samples for fixed prompts."""

    def __init__(self, args):
        self.args = args
        self.tokenizer, self.fingerprint = load_frozen_tokenizer(args.out_dir)
        tcfg = self.tokenizer.cfg
        self.image_size, N, D = tcfg.image_size, tcfg.num_latents, tcfg.latent_dim
        self.encoder = pj.TextEncoder(args.text_encoder, num_tokens=N)  # N text tokens = N image tokens
        pcfg = pj.ProjectorConfig(**{**vars(pj.PRESETS[args.preset]), "text_dim": self.encoder.dim,
                                     "num_tokens": N, "token_dim": D})
        fcfg = flow.FlowConfig(**{**vars(flow.PRESETS[args.preset]), "num_tokens": N, "token_dim": D})
        self.model = flow.TextToImage(pcfg, fcfg)
        self.model_config = {"projector": vars(pcfg), "flow": vars(fcfg), "text_encoder": args.text_encoder,
                             "tokenizer": self.fingerprint}
        self.tsum, self.tcount = torch.zeros(T_BINS), torch.zeros(T_BINS)

    def to(self, device):
        self.device = device
        self.tokenizer.to(device)
        self.encoder.to(device)

    @torch.no_grad()
    def encode_images(self, images):
        """uint8 images (M, 3, H, W) -> the tokenizer's posterior mean and logvar (M, N, D), on the CPU."""
        from tqdm import tqdm
        moments = [self.tokenizer.encode(images[i: i + 256].to(self.device).float() / 255.0)
                   for i in tqdm(range(0, len(images), 256), desc="encoding images", leave=False, mininterval=2)]
        return {k: torch.cat([m[j] for m in moments]).cpu() for j, k in enumerate(("mean", "logvar"))}

    def embed(self, captions, cache):
        """Captions -> (unique embeddings (U, N, C) fp16, index (M,)): templated captions repeat a lot."""
        unique = sorted(set(captions))
        where = {c: i for i, c in enumerate(unique)}
        n_long = self.encoder.count_truncated(unique)
        if n_long:
            print(f"note: {n_long} of {len(unique)} distinct captions are longer than {self.encoder.num_tokens} "
                  f"tokens and were truncated")
        return pj.embed_captions(self.encoder, unique, cache), torch.tensor([where[c] for c in captions])

    def prepare(self, train_set, val_set, cache, master_first):
        def latents():
            path = os.path.join(cache, f"latents-{self.fingerprint}-{train_set.cache_key()}.pt")
            if os.path.exists(path):
                return torch.load(path)
            images = data.image_tensor(train_set, cache_dir=cache, desc="train set")
            out = self.encode_images(images)
            atomic_save(out, path)
            return out
        self.latents = master_first(latents)
        captions = [train_set.caption(i) for i in range(len(train_set))]
        self.text, self.text_index = master_first(lambda: self.embed(captions, cache))
        # validation: the first 256 val pairs (flow loss), and 8 fixed prompts (the preview grid)
        n_val = min(256, len(val_set))
        self.val_text = self.encoder([val_set.caption(i) for i in range(n_val)]).to(self.device)
        val_images = torch.stack([val_set[i]["image"] for i in range(n_val)])
        self.val_z = self.tokenizer.to_flow(self.tokenizer.encode(val_images.to(self.device))[0])
        self.prompts = [val_set.caption(i) for i in range(min(8, n_val))]
        self.judge, self.val_truth = load_judge_if_there(self.args.out_dir, val_set, n_val, self.device)
        return len(train_set)

    def batch(self, idx):
        text = self.text[self.text_index[idx]].to(self.device).float()  # (B, N, C)
        z = self.tokenizer.to_flow(gaussian_sample(self.latents["mean"][idx], self.latents["logvar"][idx]))
        return {"text": text, "z": z.to(self.device)}  # (B, N, C), (B, N, D)

    def loss(self, model, batch):
        loss, stats, err, t = model(batch["text"], batch["z"], self.args.kl_weight, self.args.align_weight,
                                    self.args.cfg_prob, self.args.gather_negatives, self.args.t_dist)
        b = (t * T_BINS).long().clamp(max=T_BINS - 1).cpu()
        self.tsum.index_add_(0, b, err.float().cpu())
        self.tcount.index_add_(0, b, torch.ones_like(err).float().cpu())
        return loss, stats

    def pop_log(self):
        """The flow loss per t-bin, averaged over the steps since the last log line."""
        out = {f"flow_t{i}": (self.tsum[i] / self.tcount[i]).item() for i in range(T_BINS) if self.tcount[i] > 0}
        self.tsum.zero_()
        self.tcount.zero_()
        return out

    @torch.no_grad()
    def validate(self, ema, path):
        """Flow loss of the EMA weights on validation pairs (fixed t grid, no flags, projector mean), and a grid
        of samples: one row per fixed prompt, 8 seeds each."""
        g = torch.Generator(device=self.device).manual_seed(0)
        t = torch.linspace(0.02, 0.98, len(self.val_z), device=self.device)
        mean, _ = ema.projector(self.val_text)
        x_t, v = flow.interpolate(mean, self.val_z, t)
        flags = torch.zeros(len(t), dtype=torch.long, device=self.device)
        val_flow = (ema.flow(x_t, t, flags) - v).pow(2).mean().item()
        text = self.encoder(self.prompts).to(self.device).repeat_interleave(8, 0)
        z = ema.generate(text, SAMPLE_STEPS, SAMPLE_CFG, generator=g)
        images = self.tokenizer.decode(self.tokenizer.from_flow(z))
        save_image_grid(images, nrow=8, path=path, labels=self.prompts)
        out = {"val_flow": val_flow}
        if self.judge is not None:  # one sample per validation caption, read by the judge
            z = ema.generate(self.val_text, SAMPLE_STEPS, SAMPLE_CFG, generator=g)
            _, pred = judge.predict(self.judge, self.tokenizer.decode(self.tokenizer.from_flow(z)).clamp(0, 1))
            out.update({f"val_{k}": v for k, v in judge.accuracy(pred.cpu(), self.val_truth).items()})
        return out

    def finish(self, ema):
        return {}


TASK_CLASSES = {"tokenizer": TokenizerTask, "t2i": T2ITask}


# -----------------------------------------------------------------------------
# The loop

def train(args, rank=0, world=1, device=torch.device("cpu")):
    master = rank == 0
    if args.batch_size % world:
        raise UserError(f"--batch-size {args.batch_size} must be divisible by the number of processes ({world})")
    os.makedirs(args.out_dir, exist_ok=True)
    ckpt_path = os.path.join(args.out_dir, f"{args.task}.pt")
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    task = TASK_CLASSES[args.task](args)
    model = task.model.to(device)
    task.to(device)
    ema = copy.deepcopy(model).requires_grad_(False)  # the weights that get saved for sampling
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, args.beta2))
    autocast, scaler = autocast_and_scaler(device)

    step, history, evals, train_seconds = 0, [], [], 0.0
    if args.resume:
        if os.path.exists(ckpt_path):
            ck = load_checkpoint(ckpt_path, expect_task=args.task)
            try:
                model.load_state_dict(ck["model"])
                ema.load_state_dict(ck["ema"])
                opt.load_state_dict(ck["optimizer"])
            except (RuntimeError, ValueError, KeyError):
                raise UserError(f"{ckpt_path} holds a model of another shape ({ck.get('model_config')}); resume "
                                f"with the flags it was trained with, or train afresh in another --out-dir") from None
            if scaler is not None and ck.get("scaler"):
                scaler.load_state_dict(ck["scaler"])
            step, history, evals, train_seconds = ck["step"], ck["history"], ck["evals"], ck["train_seconds"]
            if master:
                print(f"resuming {ckpt_path} at step {step}")
        elif master:
            print(f"--resume: no checkpoint at {ckpt_path} yet, starting from scratch")

    # Data: prepared once into out/cache (images as one uint8 tensor; t2i adds latents and text embeddings).
    train_set = data.open_dataset(args.data, "train", size=task.image_size, seed=args.seed, n=args.num_train)
    val_set = data.open_dataset(args.data, "val", size=task.image_size, seed=args.seed)

    def master_first(make):
        """Rank 0 computes (and caches) first; the other ranks then read its cache."""
        out = make() if master else None
        if world > 1:
            torch.distributed.barrier()
        return out if master else make()

    n_train = task.prepare(train_set, val_set, os.path.join(args.out_dir, "cache"), master_first)
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
        if not master:
            return
        atomic_save({"task": args.task, "config": vars(args), "model_config": task.model_config,
                     "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                     "scaler": scaler.state_dict() if scaler is not None else None,
                     "step": step, "history": history, "evals": evals, "finished": final,
                     "train_seconds": train_seconds + time.time() - t_start}, ckpt_path)
        save_loss_curve(history, os.path.join(args.out_dir, f"{args.task}_loss.png"), evals)

    log_path = os.path.join(args.out_dir, f"{args.task}_log.jsonl")
    if master and step == 0 and os.path.exists(log_path):
        os.remove(log_path)  # a fresh run starts a fresh log; a resumed one appends
    local_bs = args.batch_size // world
    from tqdm import tqdm
    bar = tqdm(total=args.max_steps, initial=step, disable=not master, dynamic_ncols=True, desc=args.task)
    t_start = t_last = time.time()  # train_seconds: wall time spent in this loop, summed over resumes
    n_last = 0
    model.train()
    while step < args.max_steps:
        torch.manual_seed(step_seed(args, rank, step))
        idx = global_batch_indices(n_train, args.batch_size, step, args.seed)
        idx = idx[rank * local_bs:(rank + 1) * local_bs].sort().values  # this rank's share; sorted reads
        batch = task.batch(idx)
        lr = learning_rate(args, step)
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast():
            loss, stats = task.loss(train_model, batch)
        if not torch.isfinite(loss):
            raise UserError(f"loss became {loss.item()} at step {step} "
                            f"({', '.join(f'{k}={v.item():.4g}' for k, v in stats.items())}); "
                            f"the last good checkpoint is {ckpt_path}")
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip) if args.grad_clip > 0 else torch.zeros(())
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
                   "grad_norm": gnorm.item(), **task.pop_log(), "samples_per_s": n_last / dt, "time": time.time()}
            t_last, n_last = time.time(), 0
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
    bar.close()
    if master:
        extra = task.finish(ema)
        save(final=True)
        print(f"done: {ckpt_path}" + (f" ({', '.join(f'{k}={v:.4g}' for k, v in extra.items())})" if extra else ""))


def tokenizer_is_ready(out_dir):
    path = os.path.join(out_dir, "tokenizer.pt")
    return os.path.exists(path) and load_checkpoint(path, expect_task="tokenizer").get("finished", False)


def main(argv=None):
    args = get_args(argv)
    try:
        rank, world, device = setup_distributed(args.device)
        if args.task == "t2i" and not tokenizer_is_ready(args.out_dir):
            # t2i flows into a frozen tokenizer's latents: a fresh clone trains that first, with its own defaults
            if rank == 0:
                print(f"notice: no trained tokenizer in {args.out_dir}; training it first "
                      f"(python train.py --task tokenizer --out-dir {args.out_dir}), then t2i")
            tok_argv = ["--task", "tokenizer", "--out-dir", args.out_dir, "--data", args.data, "--seed",
                        str(args.seed), "--device", args.device, "--resume"]
            if args.num_train:
                tok_argv += ["--num-train", str(args.num_train)]
            train(get_args(tok_argv), rank, world, device)
        train(args, rank, world, device)
        if world > 1:
            torch.distributed.destroy_process_group()
    except (UserError, data.DataError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted; continue with --resume")


if __name__ == "__main__":
    main()
