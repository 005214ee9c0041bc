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

import torch

from common import ArgumentParser, UserError, fail, read_lines, pick_device, save_image_grid
import flow
import pipeline
from real_data import DataError, read_image


def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default="out", help="where train.py wrote its checkpoints, or a folder export.py "
                                                    "wrote (default: out)")
    p.add_argument("--prompt", action="append", default=[], help="a caption to draw (repeatable)")
    p.add_argument("--prompts", metavar="FILE", help="a file of prompts: one per line, or JSON lines with 'prompt'")
    p.add_argument("--image", action="append", default=[], help="an image to caption (repeatable)")
    p.add_argument("--n", type=int, default=4, help="images per prompt (default: 4)")
    p.add_argument("--steps", type=int, help=f"Euler steps (default: {flow.T2I_STEPS} from text, {flow.I2T_STEPS} "
                   f"from images)")
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
    if args.n <= 0 or (args.steps is not None and args.steps <= 0):
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


def main(argv=None):
    args = get_args(argv)
    try:
        if args.image:
            caption_images(args)
        if args.prompt or args.prompts or not args.image:
            draw_prompts(args)
    except (UserError, DataError) as e:
        fail(str(e))


def caption_images(args):
    i2t = pipeline.load_image_to_text(args.out_dir, pick_device(args.device))
    if args.compile:
        i2t.model.flow = torch.compile(i2t.model.flow)
    images = torch.stack([read_image(path, i2t.tokenizer.cfg.image_size) for path in args.image])
    guidance = flow.I2T_CFG if args.cfg is None else args.cfg
    steps = flow.I2T_STEPS if args.steps is None else args.steps
    for path, caption in zip(args.image, i2t.captions(images, steps, guidance, args.temperature, args.top_k,
                                                      args.seed)):
        print(f"{path}: {caption}")


def draw_prompts(args):
    prompts = list(args.prompt) + (read_prompts(args.prompts) if args.prompts else [])
    if not prompts:
        raise UserError("nothing to do: give --prompt \"a large red circle at the top\", --prompts FILE or "
                        "--image PATH")
    if any(not p.strip() for p in prompts):
        raise UserError("empty prompt: every --prompt needs some text")
    t2i = pipeline.load_text_to_image(args.out_dir, pick_device(args.device))
    if args.compile:
        t2i.model.flow = torch.compile(t2i.model.flow)
    for p in prompts:
        if t2i.encoder.count_truncated([p]):
            print(f"warning: prompt longer than {t2i.encoder.num_tokens} tokens, truncated: {p!r}")
    guidance = flow.T2I_CFG if args.cfg is None else args.cfg
    steps = flow.T2I_STEPS if args.steps is None else args.steps
    images = t2i.images(prompts, args.n, steps, guidance, args.seed, args.noise_scale)
    save_image_grid(images, nrow=args.n, path=args.out, labels=[p[:40] for p in prompts])
    print(f"wrote {args.out} ({len(prompts)} prompt(s) x {args.n} image(s), {steps} steps, cfg {guidance})")


if __name__ == "__main__":
    main()
