"""
Building blocks shared by every network in flowtok, written by hand because they are what the method is
about: rotary position embeddings (RoPE), the SwiGLU feed-forward, a pre-norm Transformer block that uses
them, and the diagonal Gaussian with its closed-form KL.

tokenizer.py, projector.py and text_decoder.py all build on these, so there is one RoPE and one SwiGLU.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# Rotary position embedding (Su et al. 2021)
#
# RoPE rotates each consecutive pair of channels (x[2i], x[2i+1]) of queries and keys by an angle
# pos * theta_i, with theta_i = base^(-2i / d). Rotations keep norms, and since R(a)^T R(b) = R(b - a),
# the score q_m . k_n depends on the positions only through the offset n - m: relative position for free,
# and nothing learned. For images we use 2D RoPE: half the channels rotate with the row, half with the
# column. A token given angle 0 (latent tokens, text tokens) is left unrotated: it has no place on the grid.

ROPE_BASE = 10000.0


def rope_angles(pos, dim, base=ROPE_BASE):
    """pos: (L,) float positions -> angles (L, dim // 2). dim must be even."""
    theta = base ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=pos.device) / dim)
    return pos.float()[:, None] * theta[None, :]


def rope_1d(n, dim, offset=0, device=None):
    """Angles for a sequence of n tokens at positions offset .. offset + n - 1: (n, dim // 2)."""
    return rope_angles(torch.arange(offset, offset + n, device=device), dim)


def rope_2d(h, w, dim, device=None):
    """Angles for an h x w grid in row-major order: (h * w, dim // 2); first half row, second half column."""
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return torch.cat([rope_angles(rows, dim // 2), rope_angles(cols, dim // 2)], dim=-1)


def sincos_2d(h, w, dim, device=None):
    """Fixed absolute 2D position code (h * w, dim): sin and cos of the RoPE angles of each grid cell."""
    ang = rope_2d(h, w, dim // 2, device=device)  # (h * w, dim // 4)
    return torch.cat([ang.sin(), ang.cos()], dim=-1).repeat_interleave(2, dim=-1)  # (h * w, dim)


def apply_rope(x, angles):
    """Rotate channel pairs of x (..., L, dim) by angles (L, dim // 2). Computed in fp32, cast back."""
    cos, sin = angles.cos(), angles.sin()
    xf = x.float().unflatten(-1, (-1, 2))  # (..., L, dim/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).type_as(x)


# -----------------------------------------------------------------------------
# SwiGLU feed-forward (Shazeer 2020): W2 (SiLU(W1 x) * W3 x). The gate W1 decides, per hidden unit, how much
# of the value W3 x passes. Hidden width 2/3 * 4 * dim keeps the parameter count of a 4x GELU MLP.

def swiglu_hidden(dim, multiple_of=32):
    hidden = int(2 * 4 * dim / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    def __init__(self, dim, hidden=None):
        super().__init__()
        hidden = hidden or swiglu_hidden(dim)
        self.w1 = nn.Linear(dim, hidden, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden, bias=False)  # value
        self.w2 = nn.Linear(hidden, dim, bias=False)  # out

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


# -----------------------------------------------------------------------------
# Attention and the pre-norm Transformer block

class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        assert dim % heads == 0, f"width {dim} is not divisible by {heads} heads"
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, angles=None, causal=False):
        """x: (B, L, dim); angles: (L, head_dim // 2) RoPE angles or None."""
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, hd)
        if angles is not None:
            q, k = apply_rope(q, angles), apply_rope(k, angles)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, L, hd)
        return self.proj(y.transpose(1, 2).reshape(B, L, -1))


class Block(nn.Module):
    """x + Attn(LN(x)), then x + SwiGLU(LN(x))."""

    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = SwiGLU(dim)

    def forward(self, x, angles=None, causal=False):
        x = x + self.attn(self.norm1(x), angles, causal)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, dim, depth, heads):
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, angles=None, causal=False):
        for block in self.blocks:
            x = block(x, angles, causal)
        return self.norm(x)


def init_weights(module):
    """Truncated-normal(0.02) Linear weights, zero biases, unit LayerNorms: the ViT / GPT-2 recipe."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# -----------------------------------------------------------------------------
# Diagonal Gaussian posterior and its KL to N(0, I)

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # clamp, as in the Stable Diffusion / TA-TiTok VAEs


def split_moments(moments):
    """(..., 2D) -> mean (..., D), logvar (..., D) clamped to [LOGVAR_MIN, LOGVAR_MAX]."""
    mean, logvar = moments.float().chunk(2, dim=-1)
    return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


def gaussian_sample(mean, logvar, generator=None):
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * eps


def gaussian_kl(mean, logvar):
    """KL(N(mean, exp(logvar)) || N(0, I)) per sample, summed over all but the batch dim, in fp32:
    0.5 * sum(mean^2 + var - 1 - logvar)."""
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


class FlowScale:
    """to_flow / from_flow for a module with a `latent_scale` buffer (the image tokenizer, the text autoencoder):
    latents in and out of the flow's unit-variance space. The only place latent_scale multiplies or divides."""

    def to_flow(self, z):
        """Latent -> flow space."""
        return z * self.latent_scale

    def from_flow(self, z):
        """Flow space -> latent."""
        return z / self.latent_scale
