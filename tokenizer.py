"""
The 1D image tokenizer (TA-TiTok style, continuous, with FlowTok's RoPE + SwiGLU).

    image (B, 3, H, W) --patchify--> P patch tokens ; K learnable latent tokens
        --ViT encoder--> keep the K latent outputs --Linear--> (mean, logvar) (B, K, 2D)
        --sample--> z (B, K, D)
    z --Linear D -> width--> K latent tokens ; P copies of a learned mask token
        --ViT decoder--> keep the P mask outputs --pixel head--> image (B, 3, H, W)

K (num_latents) equals the text length N so that text and image latents have the same shape (docs/METHOD.md, "Tokens").
Patch tokens carry position through 2D RoPE; latent tokens are unrotated and tell themselves apart by their
learned content (encoder) or a learned per-slot embedding (decoder). One exception: the decoder's mask tokens
are all the same vector, and RoPE only ever sees relative offsets, so nothing could tell the mask token of the
top-left patch from that of the centre. They get a fixed (not learned) 2D sin-cos code of their absolute place.

Images are float tensors in [0, 1] outside this file; inside, the networks see [-1, 1].
"""
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import UserError
from layers import (Attention, FlowScale, Transformer, gaussian_kl, gaussian_sample, init_weights, rope_2d, sincos_2d,
                    split_moments)


LOGVAR_INIT = -8.0  # initial posterior log-variance, see initialize_weights


@dataclass
class TokenizerConfig:
    image_size: int = 32
    patch_size: int = 4
    num_latents: int = 16  # K, = text length N
    latent_dim: int = 16  # D
    enc_width: int = 128
    enc_depth: int = 3
    enc_heads: int = 4
    dec_width: int = 128
    dec_depth: int = 3
    dec_heads: int = 4
    text_dim: int = 0  # > 0: text-aware decoding, per-token text embeddings of this width join the decoder
    stem_channels: int = 0  # > 0: a small conv stem (3x3 convs, this many channels) before the patch embedding


# cpu: measured to train to high PSNR on 2 CPU cores in minutes (README, "Design choices").
# paper: ViT-B encoder, ViT-L decoder, patch 16, 256 px, 77 tokens x 16 channels (docs/METHOD.md, "Sizes").
PRESETS = {
    "tiny": TokenizerConfig(image_size=16, patch_size=4, num_latents=8, latent_dim=4, enc_width=32, enc_depth=1,
                            enc_heads=2, dec_width=32, dec_depth=1, dec_heads=2, stem_channels=4),  # tests
    "cpu": TokenizerConfig(stem_channels=32),
    "paper": TokenizerConfig(image_size=256, patch_size=16, num_latents=77, latent_dim=16, enc_width=768,
                             enc_depth=12, enc_heads=12, dec_width=1024, dec_depth=24, dec_heads=16),
}


class Tokenizer(FlowScale, nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        assert cfg.image_size % cfg.patch_size == 0, "image size must be a multiple of the patch size"
        self.cfg = cfg
        p, K, D = cfg.patch_size, cfg.num_latents, cfg.latent_dim
        self.grid = cfg.image_size // p
        # encoder
        # Patch embedding: one linear map per patch (the paper), or a conv stem first ("early convolutions help
        # transformers see better"): with it the encoder sees corners and outlines, not just colour (README).
        c = cfg.stem_channels
        assert not c or p % 2 == 0, "a conv stem halves the resolution once: the patch size must be even"
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.GELU(), nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
                                  nn.GELU()) if c else nn.Identity()  # (B, 2c, H/2, W/2)
        self.patch_embed = (nn.Conv2d(2 * c, cfg.enc_width, kernel_size=p // 2, stride=p // 2) if c else
                            nn.Conv2d(3, cfg.enc_width, kernel_size=p, stride=p))
        self.latent_tokens = nn.Parameter(torch.zeros(1, K, cfg.enc_width))
        self.encoder = Transformer(cfg.enc_width, cfg.enc_depth, cfg.enc_heads)
        self.to_moments = nn.Linear(cfg.enc_width, 2 * D)
        # decoder
        self.from_latent = nn.Linear(D, cfg.dec_width)
        self.latent_slot = nn.Parameter(torch.zeros(1, K, cfg.dec_width))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dec_width))
        self.register_buffer("mask_position", sincos_2d(self.grid, self.grid, cfg.dec_width)[None], persistent=False)
        self.text_proj = nn.Linear(cfg.text_dim, cfg.dec_width) if cfg.text_dim > 0 else None
        self.decoder = Transformer(cfg.dec_width, cfg.dec_depth, cfg.dec_heads)
        self.to_pixels = nn.Linear(cfg.dec_width, p * p * 3)
        # Latent scale factor: multiplies latents on their way into the flow, divides them on the way out.
        # Measured on training data after the tokenizer is trained (measure_latent_scale), saved with it.
        self.register_buffer("latent_scale", torch.ones(()))
        self.initialize_weights()

    def initialize_weights(self):
        init_weights(self)
        for prm in (self.latent_tokens, self.latent_slot, self.mask_token):
            nn.init.trunc_normal_(prm, std=0.02)
        w = self.patch_embed.weight.data  # like a Linear over the flattened patch
        nn.init.trunc_normal_(w.view(w.shape[0], -1), std=0.02)
        nn.init.zeros_(self.patch_embed.bias)
        # Start with a nearly deterministic posterior (std = exp(LOGVAR_INIT / 2)). With the usual logvar = 0,
        # unit noise drowns the small initial means, the decoder learns to ignore z and sits on the mean image
        # for hundreds of steps. The KL (weight ~1e-6) may still widen the posterior where that costs nothing.
        nn.init.constant_(self.to_moments.bias[self.cfg.latent_dim:], LOGVAR_INIT)
        # With 0.02-std attention weights every token starts attending uniformly to all others, and the autoencoder
        # sits on the mean image until attention learns to route latents to patches (a saddle: hundreds of steps).
        # Starting q, k, v at std 1/sqrt(width) breaks the symmetry: 22.5 dB after 400 steps instead of 19.4 (README).
        for m in self.modules():
            if isinstance(m, Attention):
                nn.init.normal_(m.qkv.weight, std=m.qkv.in_features ** -0.5)

    def rope(self, heads, width, n_extra, device):
        """2D RoPE angles for the patch grid followed by n_extra unrotated tokens: (P + n_extra, hd // 2)."""
        grid = rope_2d(self.grid, self.grid, width // heads, device=device)
        return torch.cat([grid, grid.new_zeros(n_extra, grid.shape[1])])

    # ---------------------------------------------------------------- encoder
    def encode(self, images):
        """images (B, 3, H, W) in [0, 1] -> mean, logvar, each (B, K, D), fp32."""
        cfg = self.cfg
        x = self.patch_embed(self.stem(images * 2.0 - 1.0)).flatten(2).transpose(1, 2)  # (B, P, enc_width)
        x = torch.cat([x, self.latent_tokens.expand(x.shape[0], -1, -1)], dim=1)  # (B, P + K, W)
        x = self.encoder(x, self.rope(cfg.enc_heads, cfg.enc_width, cfg.num_latents, x.device))
        return split_moments(self.to_moments(x[:, -cfg.num_latents:]))  # (B, K, D) each

    def encode_sample(self, images, sample=True, generator=None):
        """images -> z (B, K, D): a draw from the posterior, or its mean."""
        mean, logvar = self.encode(images)
        return gaussian_sample(mean, logvar, generator) if sample else mean

    # ---------------------------------------------------------------- decoder
    def decode(self, z, text=None):
        """z (B, K, D) -> images (B, 3, H, W), roughly [0, 1] (not clamped). text: (B, L, text_dim) or None."""
        cfg, B = self.cfg, z.shape[0]
        lat = self.from_latent(z) + self.latent_slot  # (B, K, dec_width)
        parts = [(self.mask_token + self.mask_position).expand(B, -1, -1), lat]  # (B, P, W), (B, K, W)
        if self.text_proj is not None:
            assert text is not None, "this tokenizer decodes with text: pass the text encoder's embeddings"
            parts.append(self.text_proj(text))
        x = torch.cat(parts, dim=1)  # (B, P + K [+ L], dec_width)
        x = self.decoder(x, self.rope(cfg.dec_heads, cfg.dec_width, x.shape[1] - self.grid ** 2, x.device))
        x = self.to_pixels(x[:, : self.grid ** 2])  # (B, P, p * p * 3)
        return (self.unpatchify(x) + 1.0) / 2.0

    def unpatchify(self, x):
        """(B, P, p * p * 3) -> (B, 3, H, W)."""
        B, p, g = x.shape[0], self.cfg.patch_size, self.grid
        x = x.view(B, g, g, p, p, 3).permute(0, 5, 1, 3, 2, 4)  # (B, 3, g, p, g, p)
        return x.reshape(B, 3, g * p, g * p)

    # ---------------------------------------------------------------- loss
    def forward(self, images, kl_weight=1e-6, text=None, perceptual=None, perceptual_weight=0.0, edge_weight=0.0):
        """Training loss L2 + kl_weight * KL [+ edge_weight * edge L2] [+ perceptual_weight * perceptual]
        (see the KL and edge comments below).
        Returns (loss, stats dict of 0-d tensors, reconstruction). All loss arithmetic in fp32.
        perceptual: a frozen feature network (images in [0, 1] -> features), e.g. a TorchScript VGG/LPIPS."""
        mean, logvar = self.encode(images)
        z = gaussian_sample(mean, logvar)
        recon = self.decode(z.to(mean.dtype), text)
        rec = F.mse_loss(recon.float(), images.float())
        kl = gaussian_kl(mean, logvar).mean()  # per image, summed over the K x D latent elements
        # kl_weight is relative to the L2 *summed* over an image's pixels (the SD / TA-TiTok VAE convention, where
        # 1e-6 is the recipe); rec is a per-pixel mean, hence the division by the number of pixel values.
        loss = rec + kl_weight * kl / images[0].numel()
        stats = {"rec": rec.detach(), "kl": kl.detach()}
        if edge_weight > 0:
            # L2 between the images' finite differences. Plain L2 barely notices a blob where a triangle should be:
            # the outline is a few percent of the pixels. Matching gradients puts weight on exactly those pixels.
            edge = sum(F.mse_loss(a.float(), b.float()) for a, b in zip(image_gradients(recon), image_gradients(images)))
            loss = loss + edge_weight * edge
            stats["edge"] = edge.detach()
        if perceptual is not None and perceptual_weight > 0:
            perc = F.mse_loss(perceptual(recon.float()).float(), perceptual(images.float()).float())
            loss = loss + perceptual_weight * perc
            stats["perceptual"] = perc.detach()
        return loss, stats, recon


def image_gradients(x):
    """Horizontal and vertical neighbour differences of images (B, C, H, W)."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


@torch.no_grad()
def measure_latent_scale(tokenizer, images, batch_size=256):
    """1 / std of posterior samples over `images` (N, 3, H, W) in [0, 1]: unit-variance flow latents.
    The draws come from their own seeded generator, so the scale is the same however the run got here (resumed
    or not): it depends on the weights and the images only."""
    g = torch.Generator(images.device).manual_seed(0)
    zs = [tokenizer.encode_sample(images[i: i + batch_size], generator=g) for i in range(0, len(images), batch_size)]
    return 1.0 / torch.cat(zs).float().std().clamp_min(1e-6)


def psnr(a, b):
    """Peak signal-to-noise ratio per image in dB for images in [0, 1] (clamped): (B,)."""
    mse = (a.clamp(0, 1) - b.clamp(0, 1)).float().pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def fingerprint(ck):
    """Names one trained tokenizer, so that a flow never decodes with a tokenizer it was not trained on."""
    return f"tokenizer-step{ck['step']}-{ck['train_seconds']:.3f}s"


def from_checkpoint(ck, weights="ema"):
    """Rebuild a trained tokenizer from a checkpoint dict (common.load_checkpoint), EMA weights by default."""
    model = Tokenizer(TokenizerConfig(**ck["model_config"]))
    model.load_state_dict(ck[weights])
    return model.eval().requires_grad_(False)


def check_feature_net(path):
    """The one-line error for a --perceptual path with no file (train.py checks it before any work)."""
    if not os.path.isfile(path):
        raise UserError(f"--perceptual: no file at {path}; give a feature network saved with torch.export.save (or "
                        f"TorchScript's torch.jit.save)")


def load_feature_net(path):
    """A frozen feature network from a local file (the perceptual loss's): torch.export (.pt2), else TorchScript.
    Never downloads."""
    import logging
    import zipfile
    check_feature_net(path)
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
