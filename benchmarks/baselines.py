"""
The two 2D-latent designs that bench.py measures FlowTok against. They are not part of flowtok: only the bench and
its test import them, and they are only ever timed, never trained to convergence. Each is built at the width / depth
/ heads of the FlowTok flow it is compared with, from the same pieces (layers.py, flow.py), so what differs is what
FlowTok changes (docs/METHOD.md, "Text to image"): the latent, a 32 x 32 x 4 grid cut into 2 x 2 patches (256
tokens of 16 numbers) against FlowTok's 77 x 16 tokens, and, for (b), cross-attention.

(b) LDM2D, the conventional choice: a text-conditioned DiT on the 2D latent (PixArt / SD3 style, with the same
    flow-matching objective and sampler), starting from noise. Each block is self-attention, then cross-attention
    from the 256 latent tokens to the text tokens, then SwiGLU; adaLN-Zero on t. Guidance swaps the text for a
    learned null text (the flag of the shared sampler picks it).
(c) CrossFlow2D: CrossFlow's text-as-source flow on the same 2D latent, no cross-attention. A text variational
    encoder (FlowTok's projector blocks, then a learned map from the text tokens to the 256 latent tokens) gives the
    source; the flow net is flowtok's own VelocityNet on 256 tokens with 2D positions; guidance by the CFG indicator.
    CrossFlow also trains its text encoder with a contrastive loss; it is left out here (only KL), which can only
    make this baseline faster.

Both have the methods the bench calls on FlowTok's TextToImage: loss(text, latent) and generate(text, steps, cfg).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

import flow
from layers import Attention, SwiGLU, Transformer, gaussian_kl, gaussian_sample, init_weights, rope_1d, sincos_2d
from layers import split_moments

LATENT_SHAPE = (4, 32, 32)  # an SD-VAE latent of a 256 px image: (C, H, W)
PATCH = 2  # 2 x 2 patches: (32 / 2)^2 = 256 tokens of 2 * 2 * 4 = 16 numbers
GRID = LATENT_SHAPE[1] // PATCH  # 16
NUM_PATCHES = GRID * GRID  # 256
PATCH_DIM = PATCH * PATCH * LATENT_SHAPE[0]  # 16
KL_WEIGHT = 1e-4  # CrossFlow2D's KL term, as flowtok's t2i default


def patchify(z):
    """(B, C, H, W) latent -> (B, 256, 16) tokens, row-major patches."""
    B, C, H, W = z.shape
    z = z.view(B, C, H // PATCH, PATCH, W // PATCH, PATCH)
    return z.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // PATCH) * (W // PATCH), PATCH * PATCH * C)


def unpatchify(x):
    """(B, 256, 16) tokens -> (B, C, H, W) latent; the inverse of patchify."""
    B = x.shape[0]
    C = LATENT_SHAPE[0]
    x = x.view(B, GRID, GRID, PATCH, PATCH, C).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, C, GRID * PATCH, GRID * PATCH)


def grid_velocity_net(fcfg):
    """flowtok's VelocityNet at fcfg's width / depth / heads, on the 256 patch tokens with a 2D sin-cos position code."""
    net = flow.VelocityNet(flow.FlowConfig(num_tokens=NUM_PATCHES, token_dim=PATCH_DIM, width=fcfg.width,
                                           depth=fcfg.depth, heads=fcfg.heads))
    net.pos = sincos_2d(GRID, GRID, fcfg.width)[None]  # (1, 256, W)
    return net


# -----------------------------------------------------------------------------
# (b) LDM2D: noise -> latent, text by cross-attention

class CrossAttention(nn.Module):
    """Queries from the latent tokens (B, L, W), keys and values from the text tokens (B, M, W)."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x, ctx):
        B, L, W = x.shape
        q = self.q(x).view(B, L, self.heads, -1).transpose(1, 2)  # (B, H, L, hd)
        k, v = self.kv(ctx).view(B, ctx.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)  # 2 x (B, H, M, hd)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, hd)
        return self.proj(y.transpose(1, 2).reshape(B, L, W))


class LDMBlock(nn.Module):
    """flow.DiTBlock with cross-attention between its self-attention and its SwiGLU (a plain residual, as PixArt)."""

    def __init__(self, width, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm_ctx = nn.LayerNorm(width, eps=1e-6)
        self.cross = CrossAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = SwiGLU(width)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x, ctx, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)  # 6 x (B, W)
        x = x + gate1[:, None] * self.attn(flow.modulate(self.norm1(x), shift1, scale1))
        x = x + self.cross(self.norm_ctx(x), ctx)
        return x + gate2[:, None] * self.mlp(flow.modulate(self.norm2(x), shift2, scale2))


class LDM2D(nn.Module):
    def __init__(self, fcfg, text_dim, text_tokens):
        super().__init__()
        W = fcfg.width
        self.x_in = nn.Linear(PATCH_DIM, W)
        self.register_buffer("pos", sincos_2d(GRID, GRID, W)[None], persistent=False)  # (1, 256, W)
        self.ctx_in = nn.Linear(text_dim, W)
        self.null_text = nn.Parameter(torch.empty(1, text_tokens, text_dim))  # the unconditional branch's text
        self.t_embed = nn.Sequential(nn.Linear(W, W), nn.SiLU(), nn.Linear(W, W))
        self.blocks = nn.ModuleList([LDMBlock(W, fcfg.heads) for _ in range(fcfg.depth)])
        self.norm_out = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(W, 2 * W))
        self.x_out = nn.Linear(W, PATCH_DIM)
        self.initialize_weights()

    def initialize_weights(self):
        """flow.VelocityNet's (DiT's) recipe: Xavier Linears, zero adaLN modulations and output layer."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.null_text, std=0.02)
        for layer in [block.ada[-1] for block in self.blocks] + [self.ada_out[-1], self.x_out]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def velocity(self, x, t, text):
        """x (B, 256, 16), t (B,), text (B, M, C) -> (B, 256, 16)."""
        c = self.t_embed(flow.timestep_embedding(t, self.pos.shape[-1]))  # (B, W)
        ctx = self.ctx_in(text)  # (B, M, W)
        h = self.x_in(x) + self.pos  # (B, 256, W)
        for block in self.blocks:
            h = block(h, ctx, c)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        return self.x_out(flow.modulate(self.norm_out(h), shift, scale))

    def loss(self, text, latent, drop_prob=flow.CFG_FLAG_PROB):
        """Flow matching from noise (t = 0) to the latent (t = 1); the text is dropped (null) with drop_prob."""
        x1 = patchify(latent)
        drop = torch.rand(len(text), device=text.device) < drop_prob
        text = torch.where(drop[:, None, None], self.null_text.to(text.dtype), text)
        t = flow.sample_t(len(x1), x1.device)
        x_t, v = flow.interpolate(torch.randn_like(x1), x1, t)
        return (self.velocity(x_t, t, text).float() - v.float()).pow(2).mean()

    @torch.no_grad()
    def generate(self, text, steps=20, cfg_scale=flow.T2I_CFG):
        """text (B, M, C) -> latents (B, 4, 32, 32), by flowtok's Euler sampler from noise."""
        both = torch.cat([text, self.null_text.to(text.dtype).expand_as(text)])  # (2B, M, C): flag 0, then flag 1

        def field(x, t, flag):  # euler_sample's model(x, t, flag); its flags are B zeros then B ones
            return self.velocity(x, t, both)

        noise = torch.randn(len(text), NUM_PATCHES, PATCH_DIM, device=text.device)
        return unpatchify(flow.euler_sample(field, noise, steps, cfg_scale))


# -----------------------------------------------------------------------------
# (c) CrossFlow2D: text latent -> image latent, on the 2D grid

class TextVE(nn.Module):
    """Text embeddings (B, M, C) -> mean, logvar (B, 256, 16): the projector's blocks over the M text tokens, then a
    learned linear map along the token axis from M to the 256 latent tokens."""

    def __init__(self, pcfg, text_tokens):
        super().__init__()
        self.heads = pcfg.heads
        self.inp = nn.Linear(pcfg.text_dim, pcfg.width)
        self.blocks = Transformer(pcfg.width, pcfg.depth, pcfg.heads)
        self.to_grid = nn.Linear(text_tokens, NUM_PATCHES)
        self.to_moments = nn.Linear(pcfg.width, 2 * PATCH_DIM)
        init_weights(self)

    def forward(self, text):
        h = self.blocks(self.inp(text), rope_1d(text.shape[1], self.inp.out_features // self.heads,
                                                device=text.device))  # (B, M, Wp)
        h = self.to_grid(h.transpose(1, 2)).transpose(1, 2)  # (B, 256, Wp)
        return split_moments(self.to_moments(h))  # (B, 256, 16) each


class CrossFlow2D(nn.Module):
    def __init__(self, pcfg, fcfg, text_tokens):
        super().__init__()
        self.text_ve = TextVE(pcfg, text_tokens)
        self.flow = grid_velocity_net(fcfg)

    def loss(self, text, latent, kl_weight=KL_WEIGHT):
        mean, logvar = self.text_ve(text)
        l_flow, _, _ = flow.flow_loss(self.flow, gaussian_sample(mean, logvar), patchify(latent))
        return l_flow + kl_weight * gaussian_kl(mean, logvar).mean()

    @torch.no_grad()
    def generate(self, text, steps=20, cfg_scale=flow.T2I_CFG):
        """text (B, M, C) -> latents (B, 4, 32, 32): a sample of the text latent, then flowtok's Euler sampler."""
        mean, logvar = self.text_ve(text)
        return unpatchify(flow.euler_sample(self.flow, gaussian_sample(mean, logvar), steps, cfg_scale))
