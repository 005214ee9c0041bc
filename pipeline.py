"""
The two directions as a user calls them, and the one place each chain is written out.

    t2i = pipeline.load_text_to_image("out")               # train.py's out-dir, or a folder export.py wrote
    images = t2i.images(["a large red circle at the top"], n=4)   # (4, 3, H, W) in [0, 1]
    i2t = pipeline.load_image_to_text("out")
    captions = i2t.captions(images)                          # one str per image

text -> image:  prompts -> text encoder (B, N, C) -> projector -> Z_T -> flow (Euler) -> Z_I -> tokenizer -> pixels
image -> text:  pixels -> tokenizer -> Z_I -> flow (Euler) -> Z_T -> text decoder -> words

sample.py, evaluate.py, bench.py, the training previews and the notebooks call these. A run is read from `path`
either as train.py's checkpoints (NAME.pt) or as export.py's folders (NAME/model.safetensors + NAME/config.json):
common.load_component.
"""
import torch

import flow
import text_decoder as td
import tokenizer as tok
from common import UserError, load_component
from flow import I2T_CFG, I2T_STEPS, T2I_CFG, T2I_NOISE_SCALE, T2I_STEPS
from projector import ProjectorConfig, TextEncoder


class TextToImagePipeline:
    """A trained text-to-image run: the frozen text encoder, the model (projector + flow), the frozen tokenizer."""

    def __init__(self, model, tokenizer, encoder, trained_on="shapes", trained_seed=0):
        self.model, self.tokenizer, self.encoder = model, tokenizer, encoder
        self.trained_on, self.trained_seed = trained_on, trained_seed  # its --data and --seed (evaluate.py)

    @torch.no_grad()
    def latents(self, prompts, n=4, steps=T2I_STEPS, cfg=T2I_CFG, seed=0, noise_scale=T2I_NOISE_SCALE):
        """prompts (list of P str) -> image latents in flow space (P * n, N, D), prompt-major. Every prompt gets the
        same source noise for a seed, so its images do not depend on which prompts share the batch."""
        device = next(self.model.parameters()).device
        fc = self.model.flow.cfg
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(n, fc.num_tokens, fc.token_dim, generator=g).repeat(len(prompts), 1, 1)  # (P * n, N, D)
        text = self.encoder(prompts).to(device).repeat_interleave(n, 0)  # (P * n, N, C)
        return self.model.generate(text, steps, cfg, noise_scale, noise=noise.to(device))

    @torch.no_grad()
    def decode(self, z):
        """Image latents in flow space (B, N, D) -> images (B, 3, H, W) in [0, 1]."""
        return self.tokenizer.decode(self.tokenizer.from_flow(z)).clamp(0, 1)

    def images(self, prompts, n=4, steps=T2I_STEPS, cfg=T2I_CFG, seed=0, noise_scale=T2I_NOISE_SCALE):
        """prompts (list of P str) -> images (P * n, 3, H, W) in [0, 1], prompt-major (see latents)."""
        return self.decode(self.latents(prompts, n, steps, cfg, seed, noise_scale))


class ImageToTextPipeline:
    """A trained image-to-text run: the frozen tokenizer, the flow, the frozen text autoencoder and its vocabulary."""

    def __init__(self, model, tokenizer, autoencoder, vocab, trained_on="shapes", trained_seed=0):
        self.model, self.tokenizer, self.autoencoder, self.vocab = model, tokenizer, autoencoder, vocab
        self.trained_on, self.trained_seed = trained_on, trained_seed

    @torch.no_grad()
    def latents(self, images, steps=I2T_STEPS, cfg=I2T_CFG, seed=0):
        """images (B, 3, H, W) in [0, 1] -> text latents Z_T (B, N, D) as the decoder reads them: the tokenizer's
        posterior mean Z_I -> flow."""
        device = next(self.model.parameters()).device
        g = torch.Generator(device=device).manual_seed(seed)
        z_image = self.tokenizer.to_flow(self.tokenizer.encode(images.to(device))[0])
        return self.autoencoder.from_flow(self.model.generate(z_image, steps, cfg, generator=g))

    @torch.no_grad()
    def words(self, z_text, temperature=0.0, top_k=None, seed=0):
        """Text latents Z_T (B, N, D) -> B strings; greedy unless temperature > 0."""
        g = torch.Generator(device=z_text.device).manual_seed(seed) if temperature > 0 else None
        ids = self.autoencoder.decoder.generate(z_text, temperature=temperature, top_k=top_k, generator=g)
        return [self.vocab.decode(i) for i in ids]

    def captions(self, images, steps=I2T_STEPS, cfg=I2T_CFG, temperature=0.0, top_k=None, seed=0):
        """images (B, 3, H, W) in [0, 1] -> B captions."""
        return self.words(self.latents(images, steps, cfg, seed), temperature, top_k, seed)


# -----------------------------------------------------------------------------
# Loading a run. Each flow names the frozen parts it was trained on (their fingerprints); a run whose parts do not
# fit together is refused with one line naming the command that remakes it.

def check_fingerprint(path, name, have, want, consumer, make):
    if have != want:
        raise UserError(f"{path}: {name} is not the {name} {consumer} was trained on ({have} vs {want}); "
                        f"retrain with {make}")


def load_text_to_image(path, device="cpu"):
    """A trained text-to-image run (train.py's out-dir or an exported folder) -> TextToImagePipeline, EMA weights,
    eval mode, frozen. Raises UserError when something is missing or does not fit."""
    make = f"python train.py --task t2i --out-dir {path}"
    ck = load_component(path, "t2i", make)
    tck = load_component(path, "tokenizer", make)
    mc = ck["model_config"]
    check_fingerprint(path, "tokenizer", tok.fingerprint(tck), mc["tokenizer"], "t2i", make)
    model = flow.TextToImage(ProjectorConfig(**mc["projector"]), flow.FlowConfig(**mc["flow"]))
    model.load_state_dict(ck["ema"])
    encoder = TextEncoder(mc["text_encoder"], num_tokens=mc["flow"]["num_tokens"])
    return TextToImagePipeline(model.eval().requires_grad_(False).to(device), tok.from_checkpoint(tck).to(device),
                               encoder.to(device), ck["config"]["data"], ck["config"]["seed"])


def load_image_to_text(path, device="cpu"):
    """A trained image-to-text run (train.py's out-dir or an exported folder) -> ImageToTextPipeline, EMA weights,
    eval mode, frozen. Raises UserError when something is missing or does not fit."""
    make = f"python train.py --task i2t --out-dir {path}"
    ck = load_component(path, "i2t", make)
    tck = load_component(path, "tokenizer", make)
    ack = load_component(path, "textae", make)
    mc = ck["model_config"]
    check_fingerprint(path, "tokenizer", tok.fingerprint(tck), mc["tokenizer"], "i2t", make)
    check_fingerprint(path, "textae", td.fingerprint(ack), mc["textae"], "i2t", make)
    model = flow.ImageToText(flow.FlowConfig(**mc["flow"]), mc.get("source_noise", 0.0))
    model.load_state_dict(ck["ema"])
    autoencoder, vocab = td.from_checkpoint(ack)
    return ImageToTextPipeline(model.eval().requires_grad_(False).to(device), tok.from_checkpoint(tck).to(device),
                               autoencoder.to(device), vocab, ck["config"]["data"], ck["config"]["seed"])
