"""
Measure trained flowtok models on the Shapes test split (or the test split of --data).

    python evaluate.py --task tokenizer [--out-dir out] [--json results.json]

tokenizer: PSNR (dB) of EMA-weight reconstructions (posterior mean) of the test images.
The JSON file gets one key per task ({"tokenizer": {"psnr": ...}}); other keys already in it are kept.
"""
import argparse
import json
import os
import time

import torch

import data
import tokenizer as tok
from common import ArgumentParser, UserError, fail, load_checkpoint


def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=("tokenizer",))
    p.add_argument("--out-dir", default="out", help="where train.py wrote its checkpoints (default: out)")
    p.add_argument("--data", help="dataset to test on (default: the one the checkpoint was trained on)")
    p.add_argument("--n", type=int, default=1000, help="number of test images (default: 1000)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.n <= 0 or args.batch_size <= 0:
        p.error("--n and --batch-size must be positive")
    return args


@torch.no_grad()
def eval_tokenizer(args):
    ck = load_checkpoint(os.path.join(args.out_dir, "tokenizer.pt"), expect_task="tokenizer",
                         make_it=f"python train.py --task tokenizer --out-dir {args.out_dir}")
    model = tok.from_checkpoint(ck)
    spec = args.data or ck["config"]["data"]
    test = data.open_dataset(spec, "test", size=model.cfg.image_size, n=None if spec != "shapes" else args.n)
    n = min(args.n, len(test))
    t0 = time.time()
    scores = []
    for i in range(0, n, args.batch_size):
        x = torch.stack([test[j]["image"] for j in range(i, min(n, i + args.batch_size))])
        scores.append(tok.psnr(model.decode(model.encode(x)[0]), x))
    psnr = torch.cat(scores)
    return {"psnr": psnr.mean().item(), "psnr_min": psnr.min().item(), "n": n, "step": ck["step"],
            "image_size": model.cfg.image_size, "num_tokens": model.cfg.num_latents,
            "latent_dim": model.cfg.latent_dim, "latent_scale": model.latent_scale.item(),
            "seconds": time.time() - t0}


EVALS = {"tokenizer": eval_tokenizer}


def main(argv=None):
    args = get_args(argv)
    try:
        result = EVALS[args.task](args)
    except (UserError, data.DataError) as e:
        fail(str(e))
    print(f"{args.task} ({args.out_dir})")
    for k, v in result.items():
        print(f"  {k:<14} {v:.4g}" if isinstance(v, float) else f"  {k:<14} {v}")
    if args.json:
        old = {}
        if os.path.exists(args.json):
            with open(args.json) as f:
                old = json.load(f)
        old[args.task] = result
        with open(args.json, "w") as f:
            json.dump(old, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
