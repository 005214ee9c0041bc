"""
Write a trained run for sharing, without pickles: each component's EMA weights as safetensors and what rebuilds it
as JSON, one folder per component, the layout huggingface_hub's PyTorchModelHubMixin uses:

    python export.py --out-dir out --to flowtok-shapes
    python sample.py --out-dir flowtok-shapes --prompt "a large red circle at the top"

writes flowtok-shapes/tokenizer/, t2i/, textae/, i2t/ (those the run has), each holding model.safetensors and
config.json. The optimizer state and the training history stay behind; the exported run samples and captions bit
for bit as the out-dir does (pipeline.py reads either).
"""
import json
import os
import shutil

from common import ArgumentParser, UserError, fail, load_checkpoint

COMPONENTS = ("tokenizer", "t2i", "textae", "i2t")


def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default="out", help="the run to export, as train.py wrote it (default: out)")
    p.add_argument("--to", required=True, help="a new folder to write (it must not exist, or be empty)")
    return p.parse_args(argv)


def export_component(ck, folder):
    """One checkpoint dict -> folder/model.safetensors (the EMA weights) + folder/config.json."""
    from safetensors.torch import save_file
    os.makedirs(folder)
    # one copy per name: safetensors refuses tensors that share memory (the text decoder ties its embedding and its
    # output head); load_state_dict writes both names into the one tied parameter again
    weights = {k: v.detach().clone().contiguous() for k, v in ck["ema"].items()}
    save_file(weights, os.path.join(folder, "model.safetensors"))
    meta = {"task": ck["task"], "model_config": ck["model_config"], "step": ck["step"],
            "train_seconds": ck["train_seconds"], "config": {k: ck["config"][k] for k in ("data", "seed")}}
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)


def export(out_dir, to):
    """Every finished component of `out_dir` into the new folder `to`, written beside it first and renamed into
    place, so that a failed export leaves nothing half-written. Returns the components written."""
    found = [c for c in COMPONENTS if os.path.exists(os.path.join(out_dir, f"{c}.pt"))]
    if not found:
        raise UserError(f"no checkpoint in {out_dir} (none of {', '.join(c + '.pt' for c in COMPONENTS)}); train "
                        f"one first: python train.py --task t2i --out-dir {out_dir}")
    if os.path.exists(to) and (not os.path.isdir(to) or os.listdir(to)):
        raise UserError(f"--to {to} already exists and is not an empty folder; choose a new one")
    cks = {c: load_checkpoint(os.path.join(out_dir, f"{c}.pt"), expect_task=c) for c in found}
    for c, ck in cks.items():
        if not ck.get("finished"):
            raise UserError(f"{out_dir}/{c}.pt is unfinished (step {ck['step']}); finish it first: "
                            f"python train.py --task {c} --out-dir {out_dir} --resume")
    tmp = f"{to.rstrip(os.sep)}.tmp{os.getpid()}"
    try:
        for c, ck in cks.items():
            export_component(ck, os.path.join(tmp, c))
        if os.path.isdir(to):
            os.rmdir(to)  # empty, checked above
        os.replace(tmp, to)
    except OSError as e:
        raise UserError(f"could not write {to}: {e.strerror or e}; nothing was exported") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return found


def main(argv=None):
    args = get_args(argv)
    try:
        found = export(args.out_dir, args.to)
    except UserError as e:
        fail(str(e))
    print(f"wrote {args.to}: {', '.join(found)} (model.safetensors + config.json each)")


if __name__ == "__main__":
    main()
