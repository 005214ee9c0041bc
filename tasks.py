"""
The training tasks: what train.py's one loop trains. Each task builds its model and says how a batch becomes a loss.
This file: the tokenizer and text-to-image, and the helpers the flows share; text_tasks.py: the text autoencoder and
image-to-text.

A task is a plain class with these methods, called by train.train in this order:
    __init__(args)                      build self.model (and self.model_config, saved with the checkpoint)
    to(device)                          move what it holds besides the model (frozen networks, data)
    prepare(train_set, val_set, cache, master_first) -> number of training samples
                                        load or compute (and cache) the data; master_first(fn) runs fn on rank 0
                                        first so the others read its cache
    batch(idx) -> dict                  the samples at indices idx, on the device
    loss(model, batch) -> (loss, stats) one step's loss and a dict of 0-d tensors for the log
    pop_log() -> dict                   extra numbers for the log line (averaged since the last one)
    validate(ema, path) -> dict         validation numbers; a preview picture written to path
    finish(ema) -> dict                 last words on the trained EMA model, saved with the checkpoint
"""
import os

import torch

import data
import flow
import judge
import pipeline
import projector as pj
import tokenizer as tok
from common import UserError, atomic_save, load_checkpoint, save_image_grid
from layers import gaussian_sample


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
    also reports what the judge reads off the pictures. Returns (judge or None, attributes of the first n_val)."""
    path = os.path.join(out_dir, judge.judge_name(val_set.size))
    if not (isinstance(val_set, data.ShapesDataset) and os.path.exists(path)):
        return None, None
    attrs = [val_set.attrs(i) for i in range(n_val)]
    return judge.load_or_train(out_dir, val_set.size).to(device), attrs


class TokenizerTask:
    """Reconstruction: L2 + kl_weight * KL. Previews: real images over their EMA reconstructions."""
    DEFAULTS = dict(preset="cpu", batch_size=16, max_steps=8000, lr=1e-3, min_lr=1e-5, lr_schedule="cosine",
                    warmup_steps=100, weight_decay=0.0, beta2=0.95, grad_clip=1.0, ema_decay=0.999,
                    kl_weight=1e-6, edge_weight=1.0, hue_augment=1.0)
    NEEDS = ()  # frozen inputs (trained first when missing)
    FLAGS = {"image_size", "num_tokens", "kl_weight", "edge_weight", "hue_augment", "perceptual",
             "perceptual_weight"}  # the flags it reads beyond every task's (train.GENERIC_FLAGS)

    def __init__(self, args):
        self.args = args
        cfg = tokenizer_config(args)
        self.model = tok.Tokenizer(cfg)
        self.model_config = vars(cfg)
        self.image_size = cfg.image_size
        self.perceptual = None
        if args.perceptual:
            self.perceptual = tok.load_feature_net(args.perceptual)

    def to(self, device):
        self.device = device
        if self.perceptual is not None:
            self.perceptual.to(device)

    def prepare(self, train_set, val_set, cache, master_first):
        """Load the data; returns the number of training samples."""
        self.images = master_first(lambda: data.image_tensor(train_set, cache_dir=cache, desc="train set"))
        self.val_images = torch.stack([val_set[i]["image"] for i in range(min(256, len(val_set)))]).to(self.device)
        self.judge, self.val_attrs = load_judge_if_there(self.args.out_dir, val_set, len(self.val_images), self.device)
        return len(self.images)

    def batch(self, idx):
        images = torch.as_tensor(self.images[idx.numpy()]).to(self.device).float().div_(255.0)
        if self.args.hue_augment > 0:
            images = data.random_hue(images, self.args.hue_augment)
        return {"image": images}

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
            out.update({f"val_recon_{k}": v for k, v in judge.scores(pred.cpu(), self.val_attrs).items()})
        return out

    @torch.no_grad()
    def finish(self, ema):
        """Measure the latent scale factor on training images and store it in the (EMA) weights."""
        x = self.images[: min(len(self.images), 2048)].to(self.device).float() / 255.0
        ema.latent_scale.fill_(tok.measure_latent_scale(ema, x).item())
        return {"latent_scale": ema.latent_scale.item()}


T_BINS = 5  # the flow loss is logged per t in [0, 0.2), [0.2, 0.4), ...: where along the path the model struggles


class TBins:
    """The flow loss per t-bin, summed between log lines."""

    def __init__(self):
        self.sum, self.count = torch.zeros(T_BINS), torch.zeros(T_BINS)

    def add(self, err, t):
        b = (t * T_BINS).long().clamp(max=T_BINS - 1).cpu()
        self.sum.index_add_(0, b, err.float().cpu())
        self.count.index_add_(0, b, torch.ones_like(err).float().cpu())

    def pop(self):
        out = {f"flow_t{i}": (self.sum[i] / self.count[i]).item() for i in range(T_BINS) if self.count[i] > 0}
        self.sum.zero_()
        self.count.zero_()
        return out


@torch.no_grad()
def val_flow_loss(velocity_net, x0, x1):
    """The flow loss on validation pairs x0 -> x1 (B, N, D): t on a fixed grid over (0, 1), CFG flags off."""
    t = torch.linspace(0.02, 0.98, len(x0), device=x0.device)
    x_t, v = flow.interpolate(x0, x1, t)
    flags = torch.zeros(len(t), dtype=torch.long, device=x0.device)
    return (velocity_net(x_t, t, flags) - v).pow(2).mean().item()


def load_frozen(out_dir, name, make_it):
    """A finished checkpoint of task `name` from out_dir, or a UserError naming the command that makes it."""
    path = os.path.join(out_dir, f"{name}.pt")
    ck = load_checkpoint(path, expect_task=name, make_it=make_it)
    if not ck.get("finished"):
        raise UserError(f"{path} is an unfinished {name} run; finish it with "
                        f"python train.py --task {name} --out-dir {out_dir} --resume")
    return ck


def load_frozen_tokenizer(out_dir):
    ck = load_frozen(out_dir, "tokenizer", f"python train.py --task tokenizer --out-dir {out_dir}")
    return tok.from_checkpoint(ck), tok.fingerprint(ck)


@torch.no_grad()
def image_latents(tokenizer, fingerprint, dataset, cache, device):
    """The tokenizer's posterior (mean, logvar) (M, N, D) of every image of `dataset`, on the CPU; computed once and
    cached under the tokenizer's fingerprint. Each training step then draws a fresh Z_I from it."""
    path = os.path.join(cache, f"latents-{fingerprint}-{dataset.cache_key()}.pt")
    if os.path.exists(path):
        return torch.load(path, weights_only=True)
    images = data.image_tensor(dataset, cache_dir=cache, desc="train set")
    from tqdm import tqdm
    moments = [tokenizer.encode(images[i: i + 256].to(device).float() / 255.0)
               for i in tqdm(range(0, len(images), 256), desc="encoding images", leave=False, mininterval=2)]
    out = {k: torch.cat([m[j] for m in moments]).cpu() for j, k in enumerate(("mean", "logvar"))}
    atomic_save(out, path)
    return out


def embed_unique(encoder, captions, cache):
    """Captions -> (unique captions (U,), their embeddings (U, N, C) fp16, index (M,) into them): templated captions
    repeat a lot, and the encoder runs once per distinct caption, cached on disk."""
    unique = sorted(set(captions))
    where = {c: i for i, c in enumerate(unique)}
    n_long = encoder.count_truncated(unique)
    if n_long:
        print(f"note: {n_long} of {len(unique)} distinct captions are longer than {encoder.num_tokens} "
              f"text-encoder tokens and were truncated")
    return unique, pj.embed_captions(encoder, unique, cache), torch.tensor([where[c] for c in captions])


class T2ITask:
    """Text-to-image (docs/METHOD.md, "Losses"): projector + alignment head + flow, trained jointly with
    L = L_flow + kl_weight * L_kl + align_weight * L_align on two frozen inputs, both computed once and cached:
    the text encoder's caption embeddings and the tokenizer's posterior (mean, logvar) of every training image.
    Each step draws a fresh image latent from the cached posterior. Previews: a grid of samples for fixed prompts."""
    DEFAULTS = dict(preset="cpu", batch_size=128, max_steps=3000, lr=1e-3, min_lr=1e-5, lr_schedule="cosine",
                    warmup_steps=200, weight_decay=0.03, beta2=0.95, grad_clip=1.0, ema_decay=0.999,
                    kl_weight=1e-4, align_weight=1.0, t_dist="uniform")
    NEEDS = ("tokenizer",)
    FLAGS = {"text_encoder", "kl_weight", "align_weight", "cfg_prob", "t_dist", "gather_negatives"}

    def __init__(self, args):
        self.args = args
        self.tokenizer, fingerprint = load_frozen_tokenizer(args.out_dir)
        tcfg = self.tokenizer.cfg
        self.image_size, N, D = tcfg.image_size, tcfg.num_latents, tcfg.latent_dim
        self.encoder = pj.TextEncoder(args.text_encoder, num_tokens=N)  # N text tokens = N image tokens
        pcfg = pj.ProjectorConfig(**{**vars(pj.PRESETS[args.preset]), "text_dim": self.encoder.dim,
                                     "num_tokens": N, "token_dim": D})
        fcfg = flow.FlowConfig(**{**vars(flow.PRESETS[args.preset]), "num_tokens": N, "token_dim": D})
        self.model = flow.TextToImage(pcfg, fcfg)
        self.model_config = {"projector": vars(pcfg), "flow": vars(fcfg), "text_encoder": args.text_encoder,
                             "tokenizer": fingerprint}
        self.tbins = TBins()

    def to(self, device):
        self.device = device
        self.tokenizer.to(device)
        self.encoder.to(device)

    def prepare(self, train_set, val_set, cache, master_first):
        self.latents = master_first(lambda: image_latents(self.tokenizer, self.model_config["tokenizer"], train_set, cache, self.device))
        captions = [train_set.caption(i) for i in range(len(train_set))]
        _, self.text, self.text_index = master_first(lambda: embed_unique(self.encoder, captions, cache))
        # validation: the first 256 val pairs (flow loss), and 8 fixed prompts (the preview grid)
        n_val = min(256, len(val_set))
        self.val_text = self.encoder([val_set.caption(i) for i in range(n_val)]).to(self.device)
        val_images = torch.stack([val_set[i]["image"] for i in range(n_val)])
        self.val_z = self.tokenizer.to_flow(self.tokenizer.encode(val_images.to(self.device))[0])
        self.prompts = [val_set.caption(i) for i in range(min(8, n_val))]
        self.judge, self.val_attrs = load_judge_if_there(self.args.out_dir, val_set, n_val, self.device)
        return len(train_set)

    def batch(self, idx):
        text = self.text[self.text_index[idx]].to(self.device).float()  # (B, N, C)
        z = self.tokenizer.to_flow(gaussian_sample(self.latents["mean"][idx], self.latents["logvar"][idx]))
        return {"text": text, "z": z.to(self.device)}  # (B, N, C), (B, N, D)

    def loss(self, model, batch):
        loss, stats, err, t = model(batch["text"], batch["z"], self.args.kl_weight, self.args.align_weight,
                                    self.args.cfg_prob, self.args.gather_negatives, self.args.t_dist)
        self.tbins.add(err, t)
        return loss, stats

    def pop_log(self):
        """The flow loss per t-bin, averaged over the steps since the last log line."""
        return self.tbins.pop()

    @torch.no_grad()
    def validate(self, ema, path):
        """Flow loss of the EMA weights on validation pairs (fixed t grid, no flags, projector mean), and a grid
        of samples: one row per fixed prompt, 8 seeds each."""
        g = torch.Generator(device=self.device).manual_seed(0)
        val_flow = val_flow_loss(ema.flow, ema.projector(self.val_text)[0], self.val_z)
        t2i = pipeline.TextToImagePipeline(ema, self.tokenizer, self.encoder)
        text = self.encoder(self.prompts).to(self.device).repeat_interleave(8, 0)
        save_image_grid(t2i.decode(ema.generate(text, generator=g)), nrow=8, path=path, labels=self.prompts)
        out = {"val_flow": val_flow}
        if self.judge is not None:  # one sample per validation caption, read by the judge
            _, pred = judge.predict(self.judge, t2i.decode(ema.generate(self.val_text, generator=g)))
            out.update({f"val_{k}": v for k, v in judge.scores(pred.cpu(), self.val_attrs).items()})
        return out

    def finish(self, ema):
        return {}
