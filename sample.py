"""
Sample from trained flowtok models: text -> image (out/t2i.pt), image -> text (out/i2t.pt).

    python sample.py --prompt "a large red circle at the top" --prompt "a small blue square on the left"
    python sample.py --prompts prompts.txt --n 8 --steps 20 --cfg 1.0 --seed 0 --out samples.png
    python sample.py --image photo.jpg --image drawing.png

Text to image: one row per prompt, --n images per row, EMA weights, written to --out. A prompt's images depend only
on (prompt, --seed, --n, --steps, --cfg), not on the other prompts next to it. Prompts files: one prompt per line, or
JSON lines with a "prompt" key (the format evaluate.py --prompts reads).
Image to text: one line per image, "PATH: caption". Any image file PIL reads (PNG, JPEG, ...; grey, RGBA, palette),
any size: resized and centre-cropped as in training. Greedy decoding unless --temperature is given.
"""
import json
import os

import torch

from common import ArgumentParser, UserError, fail, read_lines, pick_device, save_image_grid
import data
import real_data
import flow


def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default="out", help="where train.py wrote its checkpoints (default: out)")
    p.add_argument("--prompt", action="append", default=[], help="a caption to draw (repeatable)")
    p.add_argument("--prompts", metavar="FILE", help="a file of prompts: one per line, or JSON lines with 'prompt'")
    p.add_argument("--image", action="append", default=[], help="an image to caption (repeatable)")
    p.add_argument("--n", type=int, default=4, help="images per prompt (default: 4)")
    p.add_argument("--steps", type=int, default=20, help="Euler steps (default: 20)")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale; 1 = off (default: "
                                             f"{flow.T2I_CFG} for images, "
                                             f"{flow.I2T_CFG} for captions)")
    p.add_argument("--temperature", type=float, default=0.0, help="captions: sampling temperature (0: greedy)")
    p.add_argument("--top-k", type=int, help="captions: sample among the k most likely tokens")
    p.add_argument("--noise-scale", type=float, default=flow.T2I_NOISE_SCALE,
                   help=f"images: Z_T = mean + NOISE_SCALE * std * noise (0: the projector's mean, one image per prompt; "
                        f"default {flow.T2I_NOISE_SCALE})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--compile", action="store_true", help="torch.compile the velocity net: faster steps on CUDA after "
                                                          "a first call that compiles (about a minute)")
    p.add_argument("--out", default="samples.png", help="the PNG grid to write (default: samples.png)")
    args = p.parse_args(argv)
    if args.n <= 0 or args.steps <= 0:
        p.error("--n and --steps must be positive")
    if args.noise_scale < 0:
        p.error("--noise-scale must be >= 0")
    if args.temperature < 0 or (args.top_k is not None and args.top_k <= 0):
        p.error("--temperature must be >= 0 and --top-k positive")
    return args


def read_prompts(path):
    """Prompts from a file: plain lines, or JSON lines with a "prompt" key. Blank lines are skipped."""
    prompts = []
    for i, line in enumerate(read_lines(path, "--prompts"), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                line = json.loads(line)["prompt"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{path}:{i}: a JSON line needs a \"prompt\" string, got {line[:60]!r}") from None
        prompts.append(str(line))
    if not prompts:
        raise UserError(f"--prompts: {path} holds no prompts")
    return prompts


@torch.no_grad()
def text_to_latents(model, encoder, prompts, n=4, steps=20, cfg=flow.T2I_CFG, seed=0, noise_scale=flow.T2I_NOISE_SCALE):
    """prompts (list of P str) -> image latents in flow space (P * n, N, D), prompt-major. Every prompt gets the
    same source noise for a seed, so its images do not depend on which prompts share the batch."""
    device = next(model.parameters()).device
    cfg_flow = model.flow.cfg
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, cfg_flow.num_tokens, cfg_flow.token_dim, generator=g).repeat(len(prompts), 1, 1)
    text = encoder(prompts).to(device).repeat_interleave(n, 0)  # (P * n, N, C)
    return model.generate(text, steps, cfg, noise_scale, noise=noise.to(device))


@torch.no_grad()
def text_to_image(model, tokenizer, encoder, prompts, n=4, steps=20, cfg=flow.T2I_CFG, seed=0,
                  noise_scale=flow.T2I_NOISE_SCALE):
    """prompts (list of P str) -> images (P * n, 3, H, W) in [0, 1], prompt-major (see text_to_latents)."""
    z = text_to_latents(model, encoder, prompts, n, steps, cfg, seed, noise_scale)
    return tokenizer.decode(tokenizer.from_flow(z)).clamp(0, 1)


def read_image(path, size):
    """An image file -> (3, size, size) in [0, 1], as training sees images; one clear line when it cannot be read."""
    if os.path.isdir(path):
        raise UserError(f"--image {path} is a directory, not an image file")
    if not os.path.exists(path):
        raise UserError(f"--image {path}: no such file")
    try:
        return data.pil_to_tensor(real_data.load_rgb(path, size))
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise UserError(f"--image {path} is not a readable image ({type(e).__name__}: {str(e)[:80]})") from None


@torch.no_grad()
def image_to_latents(model, tokenizer, images, steps=20, cfg=flow.I2T_CFG, seed=0):
    """images (B, 3, H, W) in [0, 1] -> text latents Z_T (B, N, D) for the decoder: Z_I (posterior mean) -> flow."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    return model.generate(tokenizer.to_flow(tokenizer.encode(images.to(device))[0]), steps, cfg, generator=g)


@torch.no_grad()
def image_to_text(model, tokenizer, autoencoder, vocab, images, steps=20, cfg=flow.I2T_CFG, temperature=0.0,
                  top_k=None, seed=0):
    """images (B, 3, H, W) in [0, 1] -> B captions: Z_I (posterior mean) -> flow -> Z_T -> decoder."""
    z = image_to_latents(model, tokenizer, images, steps, cfg, seed)
    g = torch.Generator(device=z.device).manual_seed(seed) if temperature > 0 else None
    ids = autoencoder.decoder.generate(autoencoder.from_flow(z), temperature=temperature, top_k=top_k, generator=g)
    return [vocab.decode(i) for i in ids]


def main(argv=None):
    args = get_args(argv)
    try:
        if args.image:
            caption_images(args)
        if args.prompt or args.prompts or not args.image:
            draw_prompts(args)
    except UserError as e:
        fail(str(e))


def caption_images(args):
    device = pick_device(args.device)
    model, tokenizer, autoencoder, vocab = flow.load_image_to_text(args.out_dir, device)
    if args.compile:
        model.flow = torch.compile(model.flow)
    images = torch.stack([read_image(path, tokenizer.cfg.image_size) for path in args.image])
    cfg = flow.I2T_CFG if args.cfg is None else args.cfg
    for path, caption in zip(args.image, image_to_text(model, tokenizer, autoencoder, vocab, images, args.steps, cfg,
                                                       args.temperature, args.top_k, args.seed)):
        print(f"{path}: {caption}")


def draw_prompts(args):
    prompts = list(args.prompt) + (read_prompts(args.prompts) if args.prompts else [])
    if not prompts:
        raise UserError("nothing to do: give --prompt \"a large red circle at the top\", --prompts FILE or "
                        "--image PATH")
    if any(not p.strip() for p in prompts):
        raise UserError("empty prompt: every --prompt needs some text")
    device = pick_device(args.device)
    model, tokenizer, encoder = flow.load_text_to_image(args.out_dir, device)
    if args.compile:
        model.flow = torch.compile(model.flow)
    long = [p for p in prompts if encoder.count_truncated([p])]
    for p in long:
        print(f"warning: prompt longer than {encoder.num_tokens} tokens, truncated: {p!r}")
    cfg = flow.T2I_CFG if args.cfg is None else args.cfg
    images = text_to_image(model, tokenizer, encoder, prompts, args.n, args.steps, cfg, args.seed, args.noise_scale)
    save_image_grid(images, nrow=args.n, path=args.out, labels=[p[:40] for p in prompts])
    print(f"wrote {args.out} ({len(prompts)} prompt(s) x {args.n} image(s), {args.steps} steps, cfg {cfg})")


if __name__ == "__main__":
    main()
