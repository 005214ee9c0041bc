"""
Sample from a trained flowtok model: text -> image.

    python sample.py --prompt "a large red circle at the top" --prompt "a small blue square on the left"
    python sample.py --prompts prompts.txt --n 8 --steps 20 --cfg 2.0 --seed 0 --out samples.png

One row per prompt, --n images per row, EMA weights. A prompt's images depend only on (prompt, --seed, --n,
--steps, --cfg), not on the other prompts next to it. Prompts files: one prompt per line, or JSON lines with a
"prompt" key (the format evaluate.py --prompts reads).
"""
import json
import os

import torch

from common import ArgumentParser, UserError, fail, pick_device, save_image_grid
import flow


def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default="out", help="where train.py wrote its checkpoints (default: out)")
    p.add_argument("--prompt", action="append", default=[], help="a caption to draw (repeatable)")
    p.add_argument("--prompts", metavar="FILE", help="a file of prompts: one per line, or JSON lines with 'prompt'")
    p.add_argument("--n", type=int, default=4, help="images per prompt (default: 4)")
    p.add_argument("--steps", type=int, default=20, help="Euler steps (default: 20)")
    p.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance scale; 1 = off (default: 2.0)")
    p.add_argument("--use-mean", action="store_true", help="start from the projector's mean, not a sample "
                                                            "(one distinct image per prompt)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--out", default="samples.png", help="the PNG grid to write (default: samples.png)")
    args = p.parse_args(argv)
    if args.n <= 0 or args.steps <= 0:
        p.error("--n and --steps must be positive")
    return args


def read_prompts(path):
    """Prompts from a file: plain lines, or JSON lines with a "prompt" key. Blank lines are skipped."""
    if not os.path.isfile(path):
        raise UserError(f"--prompts: no file at {path}")
    prompts = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
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
def text_to_image(model, tokenizer, encoder, prompts, n=4, steps=20, cfg=2.0, seed=0, use_mean=False):
    """prompts (list of P str) -> images (P * n, 3, H, W) in [0, 1], prompt-major. Every prompt gets the same
    source noise for a seed, so its images do not depend on which prompts share the batch."""
    device = next(model.parameters()).device
    cfg_flow = model.flow.cfg
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, cfg_flow.num_tokens, cfg_flow.token_dim, generator=g).repeat(len(prompts), 1, 1)
    text = encoder(prompts).to(device).repeat_interleave(n, 0)  # (P * n, N, C)
    z = model.generate(text, steps, cfg, use_mean=use_mean, noise=noise.to(device))
    return tokenizer.decode(tokenizer.from_flow(z)).clamp(0, 1)


def main(argv=None):
    args = get_args(argv)
    try:
        prompts = list(args.prompt) + (read_prompts(args.prompts) if args.prompts else [])
        if not prompts:
            raise UserError("nothing to draw: give --prompt \"a large red circle at the top\" or --prompts FILE")
        if any(not p.strip() for p in prompts):
            raise UserError("empty prompt: every --prompt needs some text")
        device = pick_device(args.device)
        model, tokenizer, encoder = flow.load_text_to_image(args.out_dir, device)
        long = [p for p in prompts if encoder.count_truncated([p])]
        for p in long:
            print(f"warning: prompt longer than {encoder.num_tokens} tokens, truncated: {p!r}")
        images = text_to_image(model, tokenizer, encoder, prompts, args.n, args.steps, args.cfg, args.seed,
                               args.use_mean)
        save_image_grid(images, nrow=args.n, path=args.out, labels=[p[:40] for p in prompts])
    except UserError as e:
        fail(str(e))
    print(f"wrote {args.out} ({len(prompts)} prompt(s) x {args.n} image(s), {args.steps} steps, cfg {args.cfg})")


if __name__ == "__main__":
    main()
