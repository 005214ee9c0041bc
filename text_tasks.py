"""
The text-side training tasks: the text autoencoder (--task textae) and the image-to-text flow (--task i2t), with the
per-image caption groups both read. They follow the task protocol described in tasks.py, and use its helpers for
frozen checkpoints, cached image latents and caption embeddings, and the flow's validation.
"""
import os

import torch

import data
import flow
import judge
import pipeline
import projector as pj
import text_decoder as td
from common import UserError, load_checkpoint, save_image_grid
from layers import gaussian_sample
from tasks import TBins, embed_unique, image_latents, load_frozen, load_frozen_tokenizer, val_flow_loss


def caption_groups(dataset, encoder, cache):
    """Every image's reference captions through the frozen encoder: (distinct captions (U,), their embeddings
    (U, N, C), groups (M, K): image i's caption indices into them, its training caption first, -1 past its last)."""
    per_image = [dataset.all_captions(i) for i in range(len(dataset))]
    unique, emb, index = embed_unique(encoder, [c for cs in per_image for c in cs], cache)
    groups = torch.full((len(per_image), max(map(len, per_image))), -1, dtype=torch.long)
    start = 0
    for i, cs in enumerate(per_image):
        groups[i, :len(cs)] = index[start: start + len(cs)]
        start += len(cs)
    return unique, emb, groups


def group_mean(x, groups):
    """Mean of x (U, ...) over each row of groups (M, K) (indices, -1 = none): (M, ...)."""
    valid = (groups >= 0).float()
    w = (valid / valid.sum(1, keepdim=True)).view(*groups.shape, *[1] * (x.dim() - 1))
    return (x[groups.clamp_min(0)] * w).sum(1)


def shapes_truth(val_set, n):
    """Attributes of the first n samples of a Shapes split, or None for real data."""
    if not isinstance(val_set, data.ShapesDataset):
        return None
    return [val_set.attrs(i) for i in range(n)]


# -----------------------------------------------------------------------------
# Image-to-text: first the text autoencoder (its projector makes the flow's targets, its decoder reads the flow's
# output), then the flow from image tokens to text tokens on both frozen halves.

def text_token_shape(args):
    """(N, D) of Z_T: the tokenizer's (N, D) when --out-dir holds one, since the image-to-text flow needs the two
    equal; else the preset's (or --num-tokens)."""
    path = os.path.join(args.out_dir, "tokenizer.pt")
    if os.path.exists(path):
        cfg = load_checkpoint(path, expect_task="tokenizer")["model_config"]
        return cfg["num_latents"], cfg["latent_dim"]
    cfg = pj.PRESETS[args.preset]
    return args.num_tokens or cfg.num_tokens, cfg.token_dim


class TextAETask:
    """The text autoencoder (text_decoder.py): projector -> Z_T -> decoder on every reference caption of the training
    images (text-encoder embeddings computed once and cached): token cross-entropy, + mean_weight * the cross-entropy
    of writing a caption from the average Z_T of 2..K captions of its image (the image-to-text flow lands on such
    means), + kl_weight * KL. A share word_dropout of the decoder's input tokens is blanked, so that it reads the
    caption from Z_T rather than from the words before; a share recolor of the images' captions get another colour
    word (text only; data.recolor) (README, Design choices). The vocabulary comes from the training captions, so
    the model is built in prepare(). Preview: validation captions and their reconstructions."""
    DEFAULTS = dict(preset="cpu", batch_size=128, max_steps=350, lr=1e-3, min_lr=1e-5, lr_schedule="cosine",
                    warmup_steps=50, weight_decay=0.03, beta2=0.95, grad_clip=1.0, ema_decay=0.999,
                    kl_weight=0.0, mean_weight=1.0, word_dropout=0.0, recolor=0.5)
    NEEDS = ()
    FLAGS = {"text_encoder", "num_tokens", "kl_weight", "mean_weight", "word_dropout", "recolor"}

    def __init__(self, args):
        self.args = args
        N, D = text_token_shape(args)
        self.encoder = pj.TextEncoder(args.text_encoder, num_tokens=N)
        self.pcfg = pj.ProjectorConfig(**{**vars(pj.PRESETS[args.preset]), "text_dim": self.encoder.dim,
                                          "num_tokens": N, "token_dim": D})
        self.image_size = args.image_size or 32  # only the captions are read; the size just opens the dataset
        self.model = None

    def to(self, device):
        self.device = device
        self.encoder.to(device)

    def prepare(self, train_set, val_set, cache, master_first):
        self.unique, self.text, self.groups = master_first(lambda: caption_groups(train_set, self.encoder, cache))
        if self.args.recolor > 0:  # Shapes only (train.py checks)
            self.recolor_table = master_first(lambda: self.add_recolored(cache))
        self.vocab = td.Vocab.build(self.unique)
        pcfg = self.pcfg
        dcfg = td.DecoderConfig(**{**vars(td.PRESETS[self.args.preset]), "vocab_size": len(self.vocab),
                                   "num_tokens": pcfg.num_tokens, "token_dim": pcfg.token_dim})
        self.inputs, self.targets, n_cut = td.pack(self.vocab, self.unique, dcfg.max_len)
        if n_cut:
            print(f"note: {n_cut} of {len(self.unique)} distinct captions are {dcfg.max_len} tokens or longer and were "
                  f"cut (the decoder's max_len)")
        torch.manual_seed(self.args.seed)  # the model is built here, identically on every rank
        self.model = td.TextAutoencoder(pcfg, dcfg)
        self.model_config = {"projector": vars(pcfg), "decoder": vars(dcfg), "vocab": self.vocab.state(),
                             "text_encoder": self.args.text_encoder}
        n_val = min(256, len(val_set))
        self.val_captions = [val_set.caption(i) for i in range(n_val)]
        self.val_text = self.encoder(self.val_captions).to(self.device)
        self.val_inputs, self.val_targets, _ = (x.to(self.device) if torch.is_tensor(x) else x for x in
                                                td.pack(self.vocab, self.val_captions, dcfg.max_len))
        self.val_refs = [val_set.all_captions(i) for i in range(n_val)]  # every reference caption, image by image
        self.val_refs_text = self.encoder([c for cs in self.val_refs for c in cs]).to(self.device)
        print(f"text autoencoder: {len(self.unique)} distinct captions of {len(self.groups)} images "
              f"(up to {self.groups.shape[1]} each), vocabulary of {len(self.vocab)} tokens")
        return len(self.groups)

    def add_recolored(self, cache):
        """Every distinct caption in every Shapes colour: the new ones embedded (cached) and appended to self.unique
        and self.text. Returns table (U', C): the index of caption u with colour word c."""
        colors = list(data.COLORS)
        own = set(self.unique)
        new, text, _ = embed_unique(self.encoder, [v for c in self.unique for k in colors
                                                   if (v := data.recolor(c, k)) not in own], cache)
        self.unique, self.text = self.unique + new, torch.cat([self.text, text])  # the groups' indices still hold
        where = {c: i for i, c in enumerate(self.unique)}
        return torch.tensor([[where[data.recolor(c, k)] for k in colors] for c in self.unique])

    def batch(self, idx):
        """Image idx's captions in random order (column 0 is written), and 2..K of them chosen for the average;
        with --recolor P, a share P of the images have all their captions' colour word swapped for a random one."""
        g = self.groups[idx]  # (B, K)
        if self.args.recolor > 0:
            swap = torch.rand(len(g)) < self.args.recolor
            color = torch.randint(0, self.recolor_table.shape[1], (len(g), 1)).expand_as(g)
            g = torch.where(swap[:, None] & (g >= 0), self.recolor_table[g.clamp_min(0), color], g)
        valid = g >= 0
        order = torch.rand(g.shape).masked_fill(~valid, 2.0).argsort(1)  # this image's captions first, shuffled
        g, n = g.gather(1, order), valid.sum(1)
        k = torch.where(n > 1, 2 + (torch.rand(len(n)) * (n - 1)).long(), 1)  # how many are averaged: 2..n
        chosen = torch.arange(g.shape[1]) < k[:, None]  # (B, K)
        j = g[:, 0]
        L = int((self.targets[j] != td.IGNORE).sum(1).max())  # no compute on columns that are padding throughout
        inputs = td.drop_words(self.inputs[j, :L], self.args.word_dropout)
        return {"text": self.text[g.clamp_min(0)].to(self.device).float(), "chosen": chosen.to(self.device),
                "inputs": inputs.to(self.device), "targets": self.targets[j, :L].to(self.device)}

    def loss(self, model, batch):
        return model(batch["text"], batch["chosen"], batch["inputs"], batch["targets"], self.args.kl_weight,
                     self.args.mean_weight)

    def pop_log(self):
        return {}

    @torch.no_grad()
    def validate(self, ema, path):
        """Cross-entropy (projector mean) and greedy exact-match rate on validation captions; the first 8 captions
        and their reconstructions go to the preview, as text."""
        mean, _ = ema.projector(self.val_text)
        logits = ema.decoder(mean, self.val_inputs)
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), self.val_targets.flatten(), ignore_index=td.IGNORE)
        recon = [self.vocab.decode(ids) for ids in ema.reconstruct(self.val_text)]
        exact = sum(r == c for r, c in zip(recon, self.val_captions)) / len(recon)
        # the mean Z_T of each image's captions, decoded: is it one of that image's captions?
        means = ema.caption_means(self.val_refs_text, [len(cs) for cs in self.val_refs])
        from_mean = [self.vocab.decode(ids) for ids in ema.decoder.generate(means)]
        mean_ref = sum(c in refs for c, refs in zip(from_mean, self.val_refs)) / len(from_mean)
        with open(os.path.splitext(path)[0] + ".txt", "w") as f:
            f.writelines(f"{c}\n  -> {r}\n" for c, r in list(zip(self.val_captions, recon))[:8])
            f.writelines(f"mean of {refs}\n  -> {c}\n" for c, refs in list(zip(from_mean, self.val_refs))[:4])
        return {"val_ce": ce.item(), "val_exact": exact, "val_mean_ref": mean_ref}

    @torch.no_grad()
    def finish(self, ema):
        """Measure Z_T's scale factor on the training captions and store it in the (EMA) weights."""
        own = self.groups[self.groups >= 0].unique()  # the training images' captions, not the recoloured ones
        ema.latent_scale.fill_(td.measure_latent_scale(ema, self.text[own].to(self.device)).item())
        return {"latent_scale": ema.latent_scale.item()}


class I2TTask:
    """Image-to-text (docs/METHOD.md, "Image to text"): the flow from the tokenizer's image tokens (source) to the
    text autoencoder's text tokens (target), both frozen, L = L_flow only. Both are precomputed: the image posterior
    of every training image (cached, as for t2i; each step draws a fresh sample) and, as its target, the mean of the
    projector's Z_T over the image's reference captions: the point a flow from one image lands on anyway (README,
    Design choices), without the noise of which caption happened to be drawn. Previews: captions of validation
    images, and on Shapes how many attributes they get right."""
    DEFAULTS = dict(preset="cpu", batch_size=128, max_steps=2000, lr=2e-3, min_lr=1e-5, lr_schedule="cosine",
                    warmup_steps=200, weight_decay=0.1, beta2=0.95, grad_clip=1.0, ema_decay=0.999,
                    t_dist="early")
    NEEDS = ("tokenizer", "textae")
    FLAGS = {"cfg_prob", "t_dist", "source_noise"}

    def __init__(self, args):
        self.args = args
        self.tokenizer, tok_fp = load_frozen_tokenizer(args.out_dir)
        ack = load_frozen(args.out_dir, "textae", f"python train.py --task textae --out-dir {args.out_dir}")
        self.autoencoder, self.vocab = td.from_checkpoint(ack)
        tcfg, acfg = self.tokenizer.cfg, ack["model_config"]["projector"]
        N, D = tcfg.num_latents, tcfg.latent_dim
        if (acfg["num_tokens"], acfg["token_dim"]) != (N, D):
            raise UserError(f"{args.out_dir}/textae.pt makes {acfg['num_tokens']} x {acfg['token_dim']} text tokens "
                            f"but the tokenizer makes {N} x {D}; retrain it: python train.py --task textae "
                            f"--out-dir {args.out_dir}")
        self.encoder = pj.TextEncoder(ack["model_config"]["text_encoder"], num_tokens=N)
        self.image_size = tcfg.image_size
        fcfg = flow.FlowConfig(**{**vars(flow.PRESETS[args.preset]), "num_tokens": N, "token_dim": D})
        self.model = flow.ImageToText(fcfg, args.source_noise)
        self.model_config = {"flow": vars(fcfg), "tokenizer": tok_fp, "textae": td.fingerprint(ack),
                             "source_noise": args.source_noise}
        self.tbins = TBins()

    def to(self, device):
        self.device = device
        for m in (self.tokenizer, self.autoencoder, self.encoder):
            m.to(device)

    @torch.no_grad()
    def prepare(self, train_set, val_set, cache, master_first):
        self.latents = master_first(lambda: image_latents(self.tokenizer, self.model_config["tokenizer"], train_set,
                                                          cache, self.device))
        _, text, groups = master_first(lambda: caption_groups(train_set, self.encoder, cache))
        means = torch.cat([self.autoencoder.projector(t.to(self.device).float())[0].cpu() for t in text.split(512)])
        self.text_target = self.autoencoder.to_flow(group_mean(means, groups))  # (M, N, D)
        n_val = min(256, len(val_set))
        self.val_images = torch.stack([val_set[i]["image"] for i in range(n_val)]).to(self.device)
        self.val_z = self.tokenizer.to_flow(self.tokenizer.encode(self.val_images)[0])
        refs = [val_set.all_captions(i) for i in range(n_val)]
        text = self.encoder([c for cs in refs for c in cs]).to(self.device)
        self.val_target = self.autoencoder.to_flow(self.autoencoder.caption_means(text, [len(cs) for cs in refs]))
        self.val_attrs = shapes_truth(val_set, n_val)
        return len(train_set)

    def batch(self, idx):
        z_image = self.tokenizer.to_flow(gaussian_sample(self.latents["mean"][idx], self.latents["logvar"][idx]))
        return {"z_image": z_image.to(self.device), "z_text": self.text_target[idx].to(self.device)}  # (B, N, D) each

    def loss(self, model, batch):
        loss, stats, err, t = model(batch["z_image"], batch["z_text"], self.args.cfg_prob, self.args.t_dist)
        self.tbins.add(err, t)
        return loss, stats

    def pop_log(self):
        return self.tbins.pop()

    @torch.no_grad()
    def validate(self, ema, path):
        """Flow loss on validation pairs (fixed t grid, no flags); captions of the validation images (greedy); on
        Shapes the attributes those captions get right. Preview: the first 8 images with their captions."""
        out = {"val_flow": val_flow_loss(ema.flow, self.val_z, self.val_target)}
        g = torch.Generator(device=self.device).manual_seed(0)
        i2t = pipeline.ImageToTextPipeline(ema, self.tokenizer, self.autoencoder, self.vocab)
        captions = i2t.words(self.autoencoder.from_flow(ema.generate(self.val_z, generator=g)))
        save_image_grid(self.val_images[:8], nrow=1, path=path, labels=captions[:8])
        if self.val_attrs is not None:
            out.update({f"val_{k}": v for k, v in judge.scores(judge.read_captions(captions), self.val_attrs).items()})
        return out

    def finish(self, ema):
        return {}
