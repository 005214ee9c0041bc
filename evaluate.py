"""
Measure trained flowtok models on the Shapes test split (or the test split of --data).

    python evaluate.py --task tokenizer [--out-dir out] [--json results.json]
    python evaluate.py --task t2i [--out-dir out] [--json results.json] [--prompts FILE.jsonl]
    python evaluate.py --task i2t [--out-dir out] [--json results.json]

tokenizer: PSNR (dB) of EMA-weight reconstructions (posterior mean) of the test images.
t2i (Shapes): a judge CNN (judge.py, trained once and cached in the out-dir) reads shape, color, size and
    position off images. judge_acc: its all-attributes accuracy on real test images (it must be trustworthy);
    recon_judge_acc: on the tokenizer's reconstructions of them (the best any flow into this tokenizer can do);
    acc_*: on images generated from the test captions, one per caption, split into seen compositions and the
    held-out (shape, color) pairs no training image shows; fd: Frechet distance between generated and real test
    images in the judge's feature space. --prompts scores any JSON-lines prompt list instead.
i2t: one caption per test image (greedy), scored with pycocoevalcap against the test captions: BLEU-1..4, ROUGE-L,
    CIDEr, and METEOR where Java runs. On Shapes also acc_*: the attributes read back from the caption
    (data.parse_caption) against the image's, overall, on seen and on held-out compositions. ae_exact: how many test
    captions the text autoencoder gives back exactly (through its projector's mean); ae_mean_ref: how often the mean
    Z_T of an image's reference captions decodes to one of them (the point the flow aims at).
The JSON file gets one key per task ({"tokenizer": {"psnr": ...}}); other keys already in it are kept.
"""
import json
import os
import time

import torch

import coco_caption
import data
import real_data
import flow
import judge as J
import tokenizer as tok
from common import ArgumentParser, UserError, fail, read_lines, load_component, pick_device, save_image_grid
from projector import TextEncoder
import probes
import pipeline


def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=("tokenizer", "t2i", "i2t"))
    p.add_argument("--out-dir", default="out", help="where train.py wrote its checkpoints (default: out)")
    p.add_argument("--data", help="dataset to test on (default: the one the checkpoint was trained on)")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="the split to measure on: test (default), or val to choose a design without looking at test")
    p.add_argument("--n", type=int, default=1000, help="number of test images (default: 1000)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--prompts", metavar="FILE.jsonl", help="t2i: score these prompts instead of the test captions; "
                   'each line {"prompt": ..., "shape": ..., "color": ..., "size": ..., "position": ...}')
    p.add_argument("--steps", type=int,
                   help=f"t2i, i2t: Euler steps (default: {flow.T2I_STEPS} for t2i, {flow.I2T_STEPS} for i2t)")
    p.add_argument("--cfg", type=float, help=f"t2i, i2t: guidance scale (default: {flow.T2I_CFG} for t2i, "
                                             f"{flow.I2T_CFG} for i2t)")
    p.add_argument("--seed", type=int, default=0, help="t2i: sampling seed")
    p.add_argument("--noise-scale", type=float, default=flow.T2I_NOISE_SCALE,
                   help=f"t2i: Z_T = mean + NOISE_SCALE * std * noise (0: the mean; default {flow.T2I_NOISE_SCALE})")
    p.add_argument("--judge-images", type=int, default=J.NUM_TRAIN, help="t2i: the judge's training set size")
    p.add_argument("--judge-steps", type=int, default=J.STEPS, help="t2i: the judge's training steps")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    args = p.parse_args(argv)
    if args.cfg is None:
        args.cfg = flow.I2T_CFG if args.task == "i2t" else flow.T2I_CFG
    if args.steps is None:
        args.steps = flow.I2T_STEPS if args.task == "i2t" else flow.T2I_STEPS
    if min(args.n, args.batch_size, args.steps, args.judge_images, args.judge_steps) <= 0:
        p.error("--n, --batch-size, --steps, --judge-images and --judge-steps must be positive")
    return args


def open_split(args, spec, size, trained_seed):
    """The split evaluate.py measures on: Shapes test is the same for every run (seed 0); Shapes val is the run's
    own validation split (train.py draws it from --seed); real data has one of each."""
    seed = trained_seed if args.split == "val" else 0
    return real_data.open_dataset(spec, args.split, size=size, seed=seed, n=args.n if spec == "shapes" else None)


@torch.no_grad()
def eval_tokenizer(args):
    ck = load_component(args.out_dir, "tokenizer", f"python train.py --task tokenizer --out-dir {args.out_dir}")
    model = tok.from_checkpoint(ck)
    spec = args.data or ck["config"]["data"]
    test = open_split(args, spec, model.cfg.image_size, ck["config"]["seed"])
    n = min(args.n, len(test))
    t0 = time.time()
    images, recons = [], []
    for i in range(0, n, args.batch_size):
        x = torch.stack([test[j]["image"] for j in range(i, min(n, i + args.batch_size))])
        images.append(x)
        recons.append(model.decode(model.encode(x)[0]).clamp(0, 1))
    images, recons = torch.cat(images), torch.cat(recons)
    psnr = tok.psnr(recons, images)
    out = {"psnr": psnr.mean().item(), "psnr_min": psnr.min().item(), "n": n, "step": ck["step"],
           "image_size": model.cfg.image_size, "num_tokens": model.cfg.num_latents,
           "latent_dim": model.cfg.latent_dim, "latent_scale": model.latent_scale.item(),
           "seconds": time.time() - t0}
    if isinstance(test, data.ShapesDataset):  # what the Shapes judge reads off the reconstructions, pair by pair
        judge = J.load_or_train(args.out_dir, model.cfg.image_size, args.judge_images, args.judge_steps)
        attrs = [test.attrs(i) for i in range(n)]
        out.update(J.split_accuracy("recon_judge_acc", J.predict(judge, recons)[1], J.targets(attrs), attrs))
    return out


def read_prompt_suite(path):
    """A JSON-lines prompt list with attributes -> (prompts, attribute dicts). Bad lines: one clear error."""
    prompts, attrs = [], []
    for i, line in enumerate(read_lines(path, "--prompts"), 1):
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


PROBE_IMAGES = 4000  # training images (and their captions) the linear probes are fitted on; seen pairs only


@torch.no_grad()
def image_latent_probe(tokenizer, seed, device):
    """A linear probe of the tokenizer's Z_I (posterior means), fitted on PROBE_IMAGES training images."""
    train = data.ShapesDataset("train", size=tokenizer.cfg.image_size, n=PROBE_IMAGES, seed=seed)
    images = torch.stack([train[i]["image"] for i in range(len(train))])
    z = torch.cat([tokenizer.encode(x.to(device))[0].cpu() for x in images.split(500)])
    return probes.fit(z, J.targets([train.attrs(i) for i in range(len(train))]), [len(v) for v in data.ATTRIBUTES.values()])


@torch.no_grad()
def eval_t2i(args):
    device = pick_device(args.device)
    t2i = pipeline.load_text_to_image(args.out_dir, device)
    model, tokenizer, encoder = t2i.model, t2i.tokenizer, t2i.encoder
    if t2i.trained_on != "shapes":
        raise UserError(f"evaluate.py --task t2i scores Shapes models (its judge reads Shapes attributes); this "
                        f"model was trained on {t2i.trained_on}. Use sample.py to look at its images")
    size = tokenizer.cfg.image_size
    suite = read_prompt_suite(args.prompts) if args.prompts else None  # a bad file fails before the judge's minutes
    t0 = time.time()
    judge = J.load_or_train(args.out_dir, size, args.judge_images, args.judge_steps)
    t_judge = time.time() - t0
    generate = lambda prompts: torch.cat([  # image latents in flow space, one per prompt
        t2i.latents(prompts[i: i + args.batch_size], n=1, steps=args.steps, cfg=args.cfg, seed=args.seed + i,
                    noise_scale=args.noise_scale).cpu() for i in range(0, len(prompts), args.batch_size)])
    decode = lambda z: torch.cat([t2i.decode(x.to(device)).cpu() for x in z.split(args.batch_size)])
    if suite:
        prompts, attrs = suite
        _, pred = J.predict(judge, decode(generate(prompts)))
        return {**J.scores(pred, attrs), "n": len(prompts), "steps": args.steps, "cfg": args.cfg}
    test = open_split(args, "shapes", size, t2i.trained_seed)
    real = torch.stack([test[i]["image"] for i in range(len(test))])
    attrs = [test.attrs(i) for i in range(len(test))]
    truth = J.targets(attrs)
    feats_real, pred_real = J.predict(judge, real)
    z_real = torch.cat([tokenizer.encode(x.to(device))[0].cpu() for x in real.split(args.batch_size)])
    recon = decode(tokenizer.to_flow(z_real))
    feats_recon, pred_recon = J.predict(judge, recon)
    t1 = time.time()
    captions = [test.caption(i) for i in range(len(test))]
    z_fake = generate(captions)
    fake = decode(z_fake)
    t_gen = time.time() - t1
    feats_fake, pred_fake = J.predict(judge, fake)
    acc = J.accuracy(pred_fake, truth)
    # The chain, link by link, with linear probes fitted on seen compositions (README, Design choices): the caption's
    # Z_T (projector mean), the image tokens Z_I of the real test images, and the Z_I the flow generates.
    seed = t2i.trained_seed
    zi_probe = image_latent_probe(tokenizer, seed, device)
    train = data.ShapesDataset("train", n=PROBE_IMAGES, seed=seed)
    train_text = encoder([train.caption(i) for i in range(len(train))]).to(device)
    zt = lambda text: torch.cat([model.projector(x.to(device))[0].cpu() for x in text.split(args.batch_size)])
    zt_probe = probes.fit(zt(train_text), J.targets([train.attrs(i) for i in range(len(train))]),
                          [len(v) for v in data.ATTRIBUTES.values()])
    chain = {**J.split_accuracy("probe_text_zt", zt_probe.predict(zt(encoder(captions))), truth, attrs),
             **J.split_accuracy("probe_real_zi", zi_probe.predict(z_real), truth, attrs),
             **J.split_accuracy("probe_generated_zi", zi_probe.predict(tokenizer.from_flow(z_fake)), truth, attrs)}
    # real test images (top row) over the images generated from their captions (bottom row)
    save_image_grid(torch.cat([real[:16], fake[:16]]), nrow=16, path=os.path.join(args.out_dir, "t2i_eval.png"))
    return {**J.split_accuracy("judge_acc", pred_real, truth, attrs),
            **J.split_accuracy("recon_judge_acc", pred_recon, truth, attrs),
            **J.split_accuracy("acc_all", pred_fake, truth, attrs),
            **{k: v for k, v in acc.items() if k != "acc_all"}, **chain,
            "fd": J.frechet_distance(feats_fake, feats_real),
            "fd_recon": J.frechet_distance(feats_recon, feats_real),
            "n": len(test), "n_heldout": sum((a["shape"], a["color"]) in data.HELDOUT_PAIRS for a in attrs),
            "steps": args.steps, "cfg": args.cfg, "noise_scale": args.noise_scale,
            "seconds_generate": t_gen, "images_per_s": len(test) / t_gen, "seconds_judge": t_judge}


# Perturbed copies of the Shapes test images for image to text (a user's picture is never exactly the renderer's):
# name -> (background RGB to render with, hue turn in degrees (sign drawn per image), blur sigma in pixels at 32 px).
PERTURBATIONS = {"background_white": ((255, 255, 255), 0, 0), "background_mid_grey": ((128, 128, 128), 0, 0),
                 "hue_10": (data.BACKGROUND, 10, 0), "blur_0.8": (data.BACKGROUND, 0, 0.8)}


def perturbed_test_images(test, n, name):
    """The first n test images of Shapes split `test`, rendered and changed as PERTURBATIONS[name] says."""
    background, hue, blur = PERTURBATIONS[name]
    images = torch.stack([data.pil_to_tensor(data.render(*data.sample_params(test.split, i, test.seed), size=test.size,
                                                         background=background)) for i in range(n)])
    if hue:
        sign = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(0)) * 2 - 1
        images = data.rotate_hue(images, hue * sign.float())
    if blur:
        images = data.gaussian_blur(images, torch.full((n,), blur * test.size / 32)).clamp(0, 1)
    return images


@torch.no_grad()
def eval_i2t(args):
    device = pick_device(args.device)
    i2t = pipeline.load_image_to_text(args.out_dir, device)
    tokenizer, autoencoder, vocab = i2t.tokenizer, i2t.autoencoder, i2t.vocab
    spec = args.data or i2t.trained_on
    size = tokenizer.cfg.image_size
    test = open_split(args, spec, size, i2t.trained_seed)
    n = min(args.n, len(test))
    items = [test[i] for i in range(n)]
    images = torch.stack([it["image"] for it in items])
    caption_batches = lambda x: [c for i in range(0, len(x), args.batch_size)
                                 for c in i2t.captions(x[i: i + args.batch_size], args.steps, args.cfg, seed=args.seed)]
    t0 = time.time()
    captions = caption_batches(images)
    t_gen = time.time() - t0
    save_image_grid(images[:16], nrow=1, path=os.path.join(args.out_dir, "i2t_eval.png"), labels=captions[:16])
    encoder = TextEncoder(autoencoder.text_encoder, num_tokens=autoencoder.projector.cfg.num_tokens).to(device)
    embed = lambda texts: torch.cat([encoder(texts[i: i + args.batch_size]).to(device)
                                     for i in range(0, len(texts), args.batch_size)])
    refs = [it["captions"] for it in items]
    means = autoencoder.caption_means(embed([c for r in refs for c in r]), [len(r) for r in refs])  # the targets
    out = {}
    shapes = isinstance(test, data.ShapesDataset)
    if shapes:
        attrs = [it["attrs"] for it in items]
        pred, truth = J.read_captions(captions), J.targets(attrs)
        out.update({k: v for k, v in J.accuracy(pred, truth).items() if k != "acc_all"})
        out.update(J.split_accuracy("acc_all", pred, truth, attrs))
        for name in PERTURBATIONS:  # the same images, drawn a little differently
            out[f"acc_all_{name}"] = J.split_accuracy(
                "a", J.read_captions(caption_batches(perturbed_test_images(test, n, name))), truth, attrs)["a"]
    out.update(coco_caption.scores(refs, captions))
    # the text autoencoder alone: do the test captions come back word for word?
    truth_text = [it["caption"] for it in items]
    recon = [vocab.decode(ids) for i in range(0, n, args.batch_size)
             for ids in autoencoder.reconstruct(embed(truth_text[i: i + args.batch_size]))]
    out["ae_exact"] = sum(r == c for r, c in zip(recon, truth_text)) / n
    # ... and does the mean Z_T of an image's reference captions decode to one of them (what the flow aims at)?
    from_mean = [vocab.decode(ids) for i in range(0, n, args.batch_size)
                 for ids in autoencoder.decoder.generate(means[i: i + args.batch_size])]
    out["ae_mean_ref"] = sum(c in r for c, r in zip(from_mean, refs)) / n
    if shapes:
        # The chain, link by link (README, Design choices): linear probes fitted on seen compositions read the image
        # tokens Z_I, the target Z_T (the mean of the image's caption latents) and the Z_T the flow makes; the decoder
        # reads the targets themselves.
        seed = i2t.trained_seed
        z_real = torch.cat([tokenizer.encode(x.to(device))[0].cpu() for x in images.split(args.batch_size)])
        z_flow = torch.cat([i2t.latents(x, args.steps, args.cfg, args.seed).cpu()
                            for x in images.split(args.batch_size)])
        train = data.ShapesDataset("train", n=PROBE_IMAGES // 2, seed=seed)
        train_refs = [train.all_captions(i) for i in range(len(train))]
        train_means = autoencoder.caption_means(embed([c for r in train_refs for c in r]), [len(r) for r in train_refs])
        zt_probe = probes.fit(train_means.cpu(), J.targets([train.attrs(i) for i in range(len(train))]),
                              [len(v) for v in data.ATTRIBUTES.values()])
        out.update(J.split_accuracy("probe_real_zi", image_latent_probe(tokenizer, seed, device).predict(z_real),
                                  truth, attrs))
        out.update(J.split_accuracy("probe_target_zt", zt_probe.predict(means.cpu()), truth, attrs))
        out.update(J.split_accuracy("probe_flow_zt", zt_probe.predict(z_flow), truth, attrs))
        out.update(J.split_accuracy("decoded_target", J.read_captions(from_mean), truth, attrs))
    return {**out, "n": n, "steps": args.steps, "cfg": args.cfg, "seconds_generate": t_gen,
            "captions_per_s": n / t_gen, "examples": [{"caption": c, "reference": r} for c, r in
                                                       zip(captions[:5], truth_text[:5])]}


EVALS = {"tokenizer": eval_tokenizer, "t2i": eval_t2i, "i2t": eval_i2t}


def read_json_results(path):
    """What --json FILE already holds (evaluate.py adds its task's section to it), checked before any work is done."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--json {path} exists but is not readable JSON ({type(e).__name__}); move it away or choose "
                        f"another file") from None
    if not isinstance(old, dict):
        raise UserError(f"--json {path} holds JSON that is not an object; move it away or choose another file")
    return old


def write_json_results(path, old, key, result):
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump({**old, key: result}, f, indent=2)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"could not write --json {path} ({e.strerror or e}); the results are printed above") from None


def main(argv=None):
    args = get_args(argv)
    try:
        old = read_json_results(args.json) if args.json else None
        if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
            raise UserError(f"--json {args.json}: its folder does not exist")
        result = EVALS[args.task](args)
    except (UserError, real_data.DataError) as e:
        fail(str(e))
    key = "t2i_prompts" if args.task == "t2i" and args.prompts else args.task
    print(f"{key} ({args.out_dir})")
    for k, v in result.items():
        if k == "examples":
            print("  examples (generated | reference):")
            print("\n".join(f"    {e['caption']} | {e['reference']}" for e in v))
        else:
            print(f"  {k:<14} {v:.4g}" if isinstance(v, float) else f"  {k:<14} {v}")
    if args.json:
        try:
            write_json_results(args.json, old, key, result)
        except UserError as e:
            fail(str(e))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
