"""
The flow: a DiT-style velocity network over N x D tokens, the flow-matching loss with CrossFlow's CFG
indicator, and the Euler sampler.

Time convention (docs/METHOD.md, "Time convention and sampling"; stated here once, used everywhere): t = 0 is the
source, t = 1 the target. For text-to-image the source x0 is the text tokens Z_T and the target x1 the image tokens
Z_I; image-to-text swaps them. With SIGMA_MIN = 1e-5:
    x_t = (1 - (1 - SIGMA_MIN) t) x0 + t x1          (a straight line from x0 to ~x1)
    v   = x1 - (1 - SIGMA_MIN) x0                    (its constant velocity: the regression target)
The paper draws t logit-normal, t = sigmoid(n), n ~ N(0, 1): most training signal in the middle of the path.
With a text source that starves the start of the path, where the picture is decided; train.py draws t uniformly
by default (sample_t, README Design choices).

Classifier-free guidance without a null prompt (the CFG indicator): in training each sample is flagged with
probability CFG_FLAG_PROB, and the flagged samples' targets are shuffled among themselves, so a flagged
source flows to *some other* sample's target; the flag goes in through a 2-entry embedding. At sampling both
branches run on the same x_t in one batched forward and v = v_flagged + s * (v_unflagged - v_flagged).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from layers import Attention, SwiGLU, rope_1d, gaussian_sample, gaussian_kl
from projector import TextProjector, AlignHead, info_nce

SIGMA_MIN = 1e-5
CFG_FLAG_PROB = 0.1
# Default guidance scales at sampling (sample.py, evaluate.py, the training previews), chosen on Shapes validation
# images (README, Design choices): text-to-image reads best without guidance (s = 1 on both seeds measured, where
# the paper uses s = 2; docs/METHOD.md, "Guidance"), image-to-text with a little (s = 2).
# Euler steps per sample: text to image the paper's 20; image to text 10, which read held-out compositions better on
# validation than 20 or 40 (README, Design choices, "Held-out compositions").
T2I_STEPS, I2T_STEPS = 20, 10
T2I_CFG, I2T_CFG = 1.0, 2.0
T2I_NOISE_SCALE = 0.5  # text-to-image sampling: Z_T = mean + NOISE_SCALE * std * noise


@dataclass
class FlowConfig:
    num_tokens: int = 16  # N
    token_dim: int = 16  # D
    width: int = 192
    depth: int = 6
    heads: int = 4


# B, XL, H: the paper's table (docs/METHOD.md, "Sizes"). tiny: tests. cpu: the CPU default.
PRESETS = {
    "tiny": FlowConfig(width=32, depth=2, heads=2),
    "cpu": FlowConfig(width=192, depth=6, heads=4),
    "S": FlowConfig(width=384, depth=12, heads=6),
    "B": FlowConfig(num_tokens=77, width=768, depth=12, heads=12),
    "XL": FlowConfig(num_tokens=77, width=1152, depth=28, heads=16),
    "H": FlowConfig(num_tokens=77, width=1280, depth=36, heads=20),
}


# -----------------------------------------------------------------------------
# Embeddings

def timestep_embedding(t, dim, max_period=10000.0):
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000, as DiT scales its integer timesteps): (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x, shift, scale):
    """adaLN: x (B, N, W) with per-sample shift, scale (B, W)."""
    return x * (1 + scale[:, None]) + shift[:, None]


# -----------------------------------------------------------------------------
# The network

class DiTBlock(nn.Module):
    """Self-attention + SwiGLU, each wrapped in adaLN-Zero: shift/scale before, a gate after, all from the
    condition vector; the gates start at zero so every block starts as the identity."""

    def __init__(self, width, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = SwiGLU(width)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)  # 6 x (B, W)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class VelocityNet(nn.Module):
    """v(x_t, t, flag): (B, N, D), (B,), (B,) long -> (B, N, D)."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.cfg = cfg
        W = cfg.width
        self.x_in = nn.Linear(cfg.token_dim, W)
        ang = rope_1d(cfg.num_tokens, W)  # fixed 1D sin-cos position code over the N tokens
        self.register_buffer("pos", torch.cat([ang.sin(), ang.cos()], -1)[None], persistent=False)  # (1, N, W)
        self.t_embed = nn.Sequential(nn.Linear(W, W), nn.SiLU(), nn.Linear(W, W))
        self.flag_embed = nn.Embedding(2, W)  # the CFG indicator
        self.blocks = nn.ModuleList([DiTBlock(W, cfg.heads) for _ in range(cfg.depth)])
        self.norm_out = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(W, 2 * W))
        self.x_out = nn.Linear(W, cfg.token_dim)
        self.initialize_weights()

    def initialize_weights(self):
        """DiT's recipe: Xavier Linears, N(0, 0.02) embeddings, and zeros for every adaLN modulation and the
        output layer, so the untrained network predicts v = 0 and each block is the identity."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embed[0].weight, std=0.02)
        nn.init.normal_(self.t_embed[2].weight, std=0.02)
        nn.init.normal_(self.flag_embed.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        for layer in (self.ada_out[-1], self.x_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, t, flag):
        c = self.t_embed(timestep_embedding(t, self.cfg.width)) + self.flag_embed(flag)  # (B, W)
        h = self.x_in(x) + self.pos  # (B, N, W)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        return self.x_out(modulate(self.norm_out(h), shift, scale))  # (B, N, D)


# -----------------------------------------------------------------------------
# Training: the path, the CFG indicator, the loss

T_DISTRIBUTIONS = ("logit-normal", "uniform", "early")


def sample_t(batch, device=None, generator=None, dist="logit-normal"):
    """t in (0, 1), (B,). logit-normal (the paper's): sigmoid of a standard normal, so t < 0.1 only 1.4% of the
    time. uniform: every t alike, including the start of the path, where a text source must decide the picture.
    early: t = u^2, density 1 / (2 sqrt(t)): 45% of the draws in the first fifth of the path, where a flow from a
    (near-)point source decides everything (image-to-text: README, Design choices)."""
    if dist == "uniform":
        return torch.rand(batch, device=device, generator=generator)
    if dist == "early":
        return torch.rand(batch, device=device, generator=generator).square()
    return torch.sigmoid(torch.randn(batch, device=device, generator=generator))


def interpolate(x0, x1, t):
    """The straight path at t: x_t and its velocity (the regression target), both (B, N, D)."""
    tt = t.view(-1, *([1] * (x0.dim() - 1)))
    x_t = (1 - (1 - SIGMA_MIN) * tt) * x0 + tt * x1
    return x_t, x1 - (1 - SIGMA_MIN) * x0


def cfg_indicator(x1, prob=CFG_FLAG_PROB, generator=None):
    """Flag each sample with probability `prob`; shuffle the flagged samples' targets among themselves.
    Returns (targets, flag (B,) long). Unflagged targets are untouched."""
    flag = torch.rand(x1.shape[0], device=x1.device, generator=generator) < prob
    idx = flag.nonzero().squeeze(1)
    perm = idx[torch.randperm(len(idx), device=x1.device, generator=generator)]
    out = x1.clone()
    out[idx] = x1[perm]
    return out, flag.long()


def flow_loss(model, x0, x1, flag_prob=CFG_FLAG_PROB, t=None, t_dist="logit-normal"):
    """Flow-matching loss: MSE between the predicted and the path velocity, in fp32.
    Returns (loss, per-sample squared error (B,), t (B,)) -- the last two for loss-per-t-bin logging."""
    x1, flag = cfg_indicator(x1, flag_prob)
    t = sample_t(x0.shape[0], x0.device, dist=t_dist) if t is None else t
    x_t, v = interpolate(x0, x1, t)
    err = (model(x_t, t, flag).float() - v.float()).pow(2).flatten(1).mean(1)  # (B,)
    return err.mean(), err.detach(), t


# -----------------------------------------------------------------------------
# Sampling

def combine_guidance(v, scale):
    """v (2B, N, D): the unflagged branch's velocities, then the flagged one's -> v_flagged + scale * (v_unflagged -
    v_flagged) (B, N, D)."""
    B = v.shape[0] // 2
    return (v[:B] - v[B:]).mul_(scale).add_(v[B:])


def guided_velocity(model, x, t, scale):
    """v_flagged + scale * (v_unflagged - v_flagged) at x (B, N, D), t (B,): both branches in one batched forward."""
    B = x.shape[0]
    flags = torch.arange(2, device=x.device).repeat_interleave(B)  # (2B,): B unflagged (0), then B flagged (1)
    return combine_guidance(model(torch.cat([x, x]), torch.cat([t, t]), flags).float(), scale)


@torch.no_grad()
def euler_sample(model, x0, steps=T2I_STEPS, cfg_scale=T2I_CFG, return_trajectory=False):
    """Integrate dx/dt = v from t = 0 (x0, the source) to t = 1 with `steps` Euler steps, guided_velocity at each.
    bf16 autocast on CUDA, fp32 elsewhere; the state x stays fp32. Returns x1 (B, N, D) or, with
    return_trajectory, a (steps + 1, B, N, D) tensor of every intermediate state."""
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    x = x0.float()  # (B, N, D)
    t = x.new_zeros(x.shape[0])  # (B,)
    dt = 1.0 / steps
    trajectory = [x]
    for _ in range(steps):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            v = guided_velocity(model, x, t, cfg_scale)
        x = x.add(v, alpha=dt)  # x + dt * v
        t = t + dt
        trajectory.append(x)
    return torch.stack(trajectory) if return_trajectory else x


# -----------------------------------------------------------------------------
# The text-to-image model: the trained parts of FlowTok's T2I direction in one module, so that the training loop,
# the EMA and the checkpoint see one set of weights. The frozen text encoder and image tokenizer live outside:
# the model takes the text encoder's embeddings (B, N, C) and the tokenizer's flow-space latents (B, N, D).

class TextToImage(nn.Module):
    def __init__(self, pcfg, fcfg: FlowConfig):
        super().__init__()
        assert (pcfg.num_tokens, pcfg.token_dim) == (fcfg.num_tokens, fcfg.token_dim), "text and image tokens differ"
        self.projector = TextProjector(pcfg)
        self.align = AlignHead(pcfg)
        self.flow = VelocityNet(fcfg)

    def forward(self, text, z_image, kl_weight, align_weight, flag_prob=CFG_FLAG_PROB, gather=False,
                t_dist="logit-normal", noise=None, t=None):
        """Training loss L_flow + kl_weight * L_kl + align_weight * L_align (docs/METHOD.md, "Losses").
        text (B, N, C) from the frozen encoder; z_image (B, N, D) in flow space. noise (B, N, D) and t (B,) fix the
        draws of Z_T and of t (default: fresh ones; the tests fix them to compare one process with several).
        Returns (loss, stats of 0-d tensors, per-sample flow error (B,), t (B,))."""
        mean, logvar = self.projector(text)  # (B, N, D) each
        if noise is None:  # the source: sampled in training (and, by default, at sampling)
            z_text = gaussian_sample(mean, logvar)
        else:
            z_text = mean + torch.exp(0.5 * logvar) * noise
        l_flow, err, t = flow_loss(self.flow, z_text, z_image, flag_prob, t=t, t_dist=t_dist)
        l_kl = gaussian_kl(mean, logvar).mean()  # per caption, summed over N x D
        l_align = info_nce(z_text, self.align(text), self.align.logit_scale, gather=gather)
        loss = l_flow + kl_weight * l_kl + align_weight * l_align
        stats = {"flow": l_flow.detach(), "kl": l_kl.detach(), "align": l_align.detach(),
                 "temperature": self.align.logit_scale.detach().exp().reciprocal()}
        return loss, stats, err, t

    @torch.no_grad()
    def generate(self, text, steps=T2I_STEPS, cfg_scale=T2I_CFG, noise_scale=T2I_NOISE_SCALE, noise=None,
                 generator=None, return_trajectory=False):
        """text (B, N, C) -> image latents in flow space (B, N, D) (or the trajectory, see euler_sample).
        The source is Z_T = mean + noise_scale * exp(logvar / 2) * noise, noise (B, N, D) drawn from `generator`
        unless given: noise_scale 1 samples the projector's Gaussian, 0 starts from its mean (one image per
        caption)."""
        mean, logvar = self.projector(text.float())
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        z_text = mean + noise_scale * torch.exp(0.5 * logvar) * noise
        return euler_sample(self.flow, z_text, steps, cfg_scale, return_trajectory)


# The image-to-text model: the flow from image tokens Z_I (the source, t = 0) to text tokens Z_T (the target, t = 1),
# both in flow space. No projector is trained with it (docs/METHOD.md, "Image to text": no KL, no alignment loss on
# this path): its targets come from the frozen text autoencoder (text_decoder.py), whose decoder turns the flow's
# output into words.

class ImageToText(nn.Module):
    """source_noise: the std (flow units) of Gaussian noise added to Z_I, in training and sampling alike, to make the
    source a distribution: the tokenizer's posterior is nearly a point (std ~0.005 of the latents' std), while one
    image has many captions (README, image-to-text)."""

    def __init__(self, fcfg: FlowConfig, source_noise=0.0):
        super().__init__()
        self.flow = VelocityNet(fcfg)
        self.source_noise = source_noise

    def forward(self, z_image, z_text, flag_prob=CFG_FLAG_PROB, t_dist="logit-normal"):
        """Training loss L_flow. z_image, z_text (B, N, D) in flow space.
        Returns (loss, stats of 0-d tensors, per-sample flow error (B,), t (B,))."""
        if self.source_noise > 0:
            z_image = z_image + self.source_noise * torch.randn_like(z_image)
        l_flow, err, t = flow_loss(self.flow, z_image, z_text, flag_prob, t_dist=t_dist)
        return l_flow, {"flow": l_flow.detach()}, err, t

    @torch.no_grad()
    def generate(self, z_image, steps=I2T_STEPS, cfg_scale=I2T_CFG, generator=None, return_trajectory=False):
        """z_image (B, N, D) -> text latents in flow space (B, N, D) (or the trajectory, see euler_sample)."""
        if self.source_noise > 0:
            noise = torch.randn(z_image.shape, generator=generator, device=z_image.device)
            z_image = z_image + self.source_noise * noise
        return euler_sample(self.flow, z_image, steps, cfg_scale, return_trajectory)
