"""
Measure trained flowtok models on the Shapes test split (or the test split of --data).

    python evaluate.py --task tokenizer [--out-dir out] [--json results.json]
    python evaluate.py --task t2i [--out-dir out] [--json results.json] [--prompts FILE.jsonl]

tokenizer: PSNR (dB) of EMA-weight reconstructions (posterior mean) of the test images.
t2i (Shapes): a judge CNN (judge.py, trained once and cached in the out-dir) reads shape, color, size and
    position off images. judge_acc: its all-attributes accuracy on real test images (it must be trustworthy);
    recon_judge_acc: on the tokenizer's reconstructions of them (the best any flow into this tokenizer can do);
    acc_*: on images generated from the test captions, one per caption, split into seen compositions and the
    held-out (shape, color) pairs no training image shows; fd: Frechet distance between generated and real test
    images in the judge's feature space. --prompts scores any JSON-lines prompt list instead.
The JSON file gets one key per task ({"tokenizer": {"psnr": ...}}); other keys already in it are kept.
"""
import json
import os
import time

import torch

import data
import flow
import judge as J
import tokenizer as tok
from common import ArgumentParser, UserError, fail, load_checkpoint, pick_device, save_image_grid
from sample import text_to_image


def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=("tokenizer", "t2i"))
    p.add_argument("--out-dir", default="out", help="where train.py wrote its checkpoints (default: out)")
    p.add_argument("--data", help="dataset to test on (default: the one the checkpoint was trained on)")
    p.add_argument("--n", type=int, default=1000, help="number of test images (default: 1000)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--prompts", metavar="FILE.jsonl", help="t2i: score these prompts instead of the test captions; "
                   'each line {"prompt": ..., "shape": ..., "color": ..., "size": ..., "position": ...}')
    p.add_argument("--steps", type=int, default=20, help="t2i: Euler steps (default: 20)")
    p.add_argument("--cfg", type=float, default=2.0, help="t2i: guidance scale (default: 2.0)")
    p.add_argument("--seed", type=int, default=0, help="t2i: sampling seed")
    p.add_argument("--use-mean", action="store_true", help="t2i: start from the projector's mean, not a sample")
    p.add_argument("--judge-images", type=int, default=J.NUM_TRAIN, help="t2i: the judge's training set size")
    p.add_argument("--judge-steps", type=int, default=J.STEPS, help="t2i: the judge's training steps")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    args = p.parse_args(argv)
    if min(args.n, args.batch_size, args.steps, args.judge_images, args.judge_steps) <= 0:
        p.error("--n, --batch-size, --steps, --judge-images and --judge-steps must be positive")
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


def read_prompt_suite(path):
    """A JSON-lines prompt list with attributes -> (prompts, attribute dicts). Bad lines: one clear error."""
    if not os.path.isfile(path):
        raise UserError(f"--prompts: no file at {path}")
    prompts, attrs = [], []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompts.append(str(row["prompt"]))
                attrs.append({k: row[k] for k in J.ATTRS})
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{path}:{i}: expected {{\"prompt\": ..., \"shape\": ..., \"color\": ..., "
                                f"\"size\": ..., \"position\": ...}}") from None
            for k in J.ATTRS:
                if attrs[-1][k] not in data.ATTRIBUTES[k]:
                    raise UserError(f"{path}:{i}: {k} {attrs[-1][k]!r} is not one of {', '.join(data.ATTRIBUTES[k])}")
    if not prompts:
        raise UserError(f"--prompts: {path} holds no prompts")
    return prompts, attrs


@torch.no_grad()
def eval_t2i(args):
    device = pick_device(args.device)
    model, tokenizer, encoder = flow.load_text_to_image(args.out_dir, device)
    if model.trained_on != "shapes":
        raise UserError(f"evaluate.py --task t2i scores Shapes models (its judge reads Shapes attributes); this "
                        f"model was trained on {model.trained_on}. Use sample.py to look at its images")
    size = tokenizer.cfg.image_size
    t0 = time.time()
    judge = J.load_or_train(args.out_dir, size, args.judge_images, args.judge_steps)
    t_judge = time.time() - t0
    generate = lambda prompts: torch.cat([
        text_to_image(model, tokenizer, encoder, prompts[i: i + args.batch_size], n=1, steps=args.steps,
                      cfg=args.cfg, seed=args.seed + i, use_mean=args.use_mean).cpu() for i in range(0, len(prompts), args.batch_size)])
    if args.prompts:
        prompts, attrs = read_prompt_suite(args.prompts)
        _, pred = J.predict(judge, generate(prompts))
        return {**J.accuracy(pred, J.targets(attrs)), "n": len(prompts), "steps": args.steps, "cfg": args.cfg}
    test = data.ShapesDataset("test", size=size, n=args.n)
    real = torch.stack([test[i]["image"] for i in range(len(test))])
    attrs = [data.sample_params("test", i, test.seed)[0] for i in range(len(test))]
    truth = J.targets(attrs)
    feats_real, pred_real = J.predict(judge, real)
    recon = torch.cat([tokenizer.decode(tokenizer.encode(x.to(device))[0]).clamp(0, 1).cpu()
                       for x in real.split(args.batch_size)])
    feats_recon, pred_recon = J.predict(judge, recon)
    t1 = time.time()
    fake = generate([test.caption(i) for i in range(len(test))])
    t_gen = time.time() - t1
    feats_fake, pred_fake = J.predict(judge, fake)
    held = torch.tensor([(a["shape"], a["color"]) in data.HELDOUT_PAIRS for a in attrs])
    acc = J.accuracy(pred_fake, truth)
    # real test images (top row) over the images generated from their captions (bottom row)
    save_image_grid(torch.cat([real[:16], fake[:16]]), nrow=16, path=os.path.join(args.out_dir, "t2i_eval.png"))
    return {"judge_acc": J.accuracy(pred_real, truth)["acc_all"],
            "recon_judge_acc": J.accuracy(pred_recon, truth)["acc_all"],
            "acc_all_seen": J.accuracy(pred_fake[~held], truth[~held])["acc_all"],
            "acc_all_heldout": J.accuracy(pred_fake[held], truth[held])["acc_all"],
            **{k: v for k, v in acc.items() if k != "acc_all"}, "acc_all": acc["acc_all"],
            "fd": J.frechet_distance(feats_fake, feats_real),
            "fd_recon": J.frechet_distance(feats_recon, feats_real),
            "n": len(test), "n_heldout": int(held.sum()), "steps": args.steps, "cfg": args.cfg,
            "use_mean": args.use_mean,
            "seconds_generate": t_gen, "images_per_s": len(test) / t_gen, "seconds_judge": t_judge}


EVALS = {"tokenizer": eval_tokenizer, "t2i": eval_t2i}


def main(argv=None):
    args = get_args(argv)
    try:
        result = EVALS[args.task](args)
    except (UserError, data.DataError) as e:
        fail(str(e))
    key = "t2i_prompts" if args.task == "t2i" and args.prompts else args.task
    print(f"{key} ({args.out_dir})")
    for k, v in result.items():
        print(f"  {k:<14} {v:.4g}" if isinstance(v, float) else f"  {k:<14} {v}")
    if args.json:
        old = {}
        if os.path.exists(args.json):
            with open(args.json) as f:
                old = json.load(f)
        old[key] = result
        with open(args.json, "w") as f:
            json.dump(old, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
