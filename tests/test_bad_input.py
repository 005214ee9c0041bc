"""The bad-input table: every command (train.py, sample.py, evaluate.py, bench.py) against broken checkpoints, odd
prompts, odd and broken images, and invalid flags. A case that is an error must give one line on stderr, exit 1
(2 for a usage error), no traceback, and leave every file as it was; a case that is merely odd must just work.
Each command runs in this process (its main(argv)): an uncaught exception would fail the test as a traceback would."""
import hashlib
import io
import os
import pickle
import shlex
import shutil
import tempfile

import numpy as np
import pytest
import torch
from PIL import Image

import bench
import evaluate
import export
import sample
import train
from test_data import odd_images
from test_train import assert_one_line_error, run

TOK = ["--task", "tokenizer", "--preset", "tiny", "--num-train", "256", "--batch-size", "16", "--max-steps", "20",
       "--sample-every", "1000"]
T2I = ["--task", "t2i", "--preset", "tiny", "--num-train", "256", "--batch-size", "32", "--max-steps", "10",
       "--sample-every", "1000"]
AE = ["--task", "textae", "--preset", "tiny", "--num-train", "256", "--batch-size", "32", "--max-steps", "10",
      "--sample-every", "1000"]
I2T = ["--task", "i2t", "--preset", "tiny", "--num-train", "256", "--batch-size", "32", "--max-steps", "10",
       "--sample-every", "1000"]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """One out-dir with every kind of checkpoint: tokenizer, t2i, textae and i2t (tiny, briefly trained)."""
    d = str(tmp_path_factory.mktemp("runs") / "out")
    for args in (TOK, T2I, AE, I2T):
        run("train.py", *args, "--out-dir", d)
    return d


def digest(folder):
    """path -> sha256 of every file under folder."""
    res = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            res[p] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return res


def call(module, argv, capsys):
    """module.main(argv) here: (exit code, stdout, stderr)."""
    try:
        module.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    o = capsys.readouterr()
    return code, o.out, o.err


def copy_run(out, dest, **replace):
    """A copy of the runs' out-dir (checkpoints only) with some files replaced: name -> bytes, or None to delete,
    or a str naming another checkpoint of the runs to put there."""
    os.makedirs(dest, exist_ok=True)
    for f in ("tokenizer.pt", "t2i.pt", "textae.pt", "i2t.pt"):
        shutil.copy(os.path.join(out, f), dest)
    for name, what in replace.items():
        path = os.path.join(dest, name.replace("_pt", ".pt"))
        os.remove(path)
        if isinstance(what, bytes):
            open(path, "wb").write(what)
        elif what == "dir":
            os.makedirs(path)
        elif isinstance(what, str):
            shutil.copy(os.path.join(out, what), path)
    return dest


def truncated(out, name):
    data = open(os.path.join(out, name), "rb").read()
    return data[: len(data) // 2]


GARBAGE = bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))


class Payload:
    """Unpickling this runs a shell command: what a shared checkpoint could carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def payload_checkpoint(marker, task="t2i"):
    """The bytes of a checkpoint-looking file (a dict with 'task') whose loading would create `marker`."""
    buf = io.BytesIO()
    torch.save({"task": task, "step": 0, "x": Payload(marker)}, buf)
    return buf.getvalue()


PAYLOAD_RAN = os.path.join(tempfile.gettempdir(), f"flowtok-payload-ran-{os.getpid()}")  # must never appear


def checkpoint_cases(out, tmp):
    """(command, case, module, argv, exit code, words the message must hold)."""
    t2i_cmd = lambda d: ["--out-dir", d, "--prompt", "a red circle", "--n", "1", "--steps", "2",  # noqa: E731
                         "--out", str(tmp / "x.png")]
    i2t_cmd = lambda d: ["--out-dir", d, "--image", str(tmp / "img.png"), "--steps", "2"]  # noqa: E731
    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp / "img.png")
    cases = []
    for kind, what, words in (("missing", None, ["no checkpoint at"]), ("truncated", "trunc", ["unreadable"]),
                              ("corrupt", GARBAGE, ["unreadable"]), ("a directory", "dir", ["is a directory"]),
                              ("a pickle payload in", payload_checkpoint(PAYLOAD_RAN), ["refused", "posix.system"])):
        for name, module, argv in (("t2i.pt", sample, t2i_cmd), ("i2t.pt", sample, i2t_cmd),
                                   ("tokenizer.pt", sample, t2i_cmd), ("textae.pt", sample, i2t_cmd)):
            d = str(tmp / f"{kind.replace(' ', '_')}-{name}")
            content = truncated(out, name) if what == "trunc" else what
            copy_run(out, d, **{name.replace(".pt", "_pt"): content})
            cases.append(("sample.py", f"{kind} {name}", module, argv(d), 1, [name, *words]))
    # a checkpoint of another task where one is expected
    d = copy_run(out, str(tmp / "swapped"), t2i_pt="tokenizer.pt")
    cases.append(("sample.py", "a tokenizer checkpoint as t2i.pt", sample, t2i_cmd(d), 1, ["'tokenizer' checkpoint"]))
    d = copy_run(out, str(tmp / "swapped2"), i2t_pt="t2i.pt")
    cases.append(("sample.py", "a t2i checkpoint as i2t.pt", sample, i2t_cmd(d), 1, ["'t2i' checkpoint"]))
    # an exported run (export.py) with a broken part
    for part in ("config.json", "model.safetensors"):
        d = str(tmp / f"exported-broken-{part}")
        export.export(out, d)
        path = os.path.join(d, "t2i", part)
        open(path, "wb").write(open(path, "rb").read()[:100])
        cases.append(("sample.py", f"an exported t2i with a truncated {part}", sample, t2i_cmd(d), 1,
                      ["exported t2i", "unreadable", "export it again"]))
    # evaluate.py, the same checkpoints
    for name, task in (("t2i.pt", "t2i"), ("i2t.pt", "i2t"), ("tokenizer.pt", "tokenizer")):
        d = copy_run(out, str(tmp / f"eval-trunc-{name}"), **{name.replace(".pt", "_pt"): truncated(out, name)})
        cases.append(("evaluate.py", f"truncated {name}", evaluate, ["--task", task, "--out-dir", d, "--n", "8"], 1,
                      [name, "unreadable"]))
        d = copy_run(out, str(tmp / f"eval-missing-{name}"), **{name.replace(".pt", "_pt"): None})
        cases.append(("evaluate.py", f"missing {name}", evaluate, ["--task", task, "--out-dir", d, "--n", "8"], 1,
                      [name, "python train.py"]))
    # train.py --resume on broken or mismatched checkpoints
    for kind, what, words in (("truncated", "trunc", ["unreadable"]), ("corrupt", GARBAGE, ["unreadable"]),
                              ("pickle payload", payload_checkpoint(PAYLOAD_RAN, "tokenizer"), ["refused"]),
                              ("of another task", "t2i.pt", ["'t2i' checkpoint"])):
        d = str(tmp / f"resume-{kind.replace(' ', '_')}")
        copy_run(out, d, tokenizer_pt=truncated(out, "tokenizer.pt") if what == "trunc" else what)
        cases.append(("train.py", f"--resume from a {kind} checkpoint", train, [*TOK, "--out-dir", d, "--resume"], 1,
                      ["tokenizer.pt", *words]))
    d = copy_run(out, str(tmp / "resume-shape"))
    cases.append(("train.py", "--resume with another preset", train,
                  [*TOK, "--preset", "cpu", "--out-dir", d, "--resume"], 1, ["another shape"]))
    d = copy_run(out, str(tmp / "flow-on-broken"), tokenizer_pt=GARBAGE)
    cases.append(("train.py", "a flow on a corrupt frozen tokenizer", train, [*T2I, "--out-dir", d, "--resume"], 1,
                  ["tokenizer.pt", "unreadable"]))
    d = copy_run(out, str(tmp / "again"))
    cases.append(("train.py", "a second run into a finished one, no --resume", train, [*TOK, "--out-dir", d], 1,
                  ["already exists", "--resume"]))
    return cases


def flag_cases(out, tmp):
    s = ["--out-dir", out, "--prompt", "a red circle", "--out", str(tmp / "f.png")]
    cases = [("train.py", f"train.py {' '.join(f)}", train, [*TOK, "--out-dir", str(tmp / "t"), *f], 2, [f[0]])
             for f in (["--max-steps", "-1"], ["--batch-size", "0"], ["--preset", "huge"], ["--lr", "0"],
                       ["--log-every", "0"], ["--cfg-prob", "1.5"])]
    cases.append(("train.py", "--task nope", train, ["--task", "nope"], 2, ["--task"]))
    cases.append(("train.py", "an abbreviated flag", train, ["--task", "t2i", "--out-dir", str(tmp / "t"), "--num-tok",
                                                             "32"], 2, ["--num-tok"]))
    cases += [("sample.py", f"sample.py {' '.join(f)}", sample, [*s, *f], 2, [f[0]])
              for f in (["--steps", "-1"], ["--steps", "0"], ["--n", "0"], ["--temperature", "-1"], ["--top-k", "0"])]
    cases += [("evaluate.py", f"evaluate.py {' '.join(f)}", evaluate, ["--task", "t2i", "--out-dir", out, *f], 2,
               [f[0]]) for f in (["--n", "0"], ["--batch-size", "0"], ["--steps", "-2"], ["--judge-steps", "0"])]
    cases.append(("evaluate.py", "--task nope", evaluate, ["--task", "nope"], 2, ["--task"]))
    cases += [("bench.py", f"bench.py {' '.join(f)}", bench, f, 2, [f[0]])
              for f in (["--batch", "0"], ["--train-batch", "-4"], ["--preset", "Q"], ["--device", "tpu"],
                        ["--min-time", "-1"], ["--rounds", "0"], ["--memory-batch", "0"])]
    return cases


def file_cases(out, tmp):
    """Prompt files, output paths, JSON files and image files that are wrong."""
    (tmp / "empty.txt").write_text("\n\n")
    (tmp / "binary.txt").write_bytes(GARBAGE)
    (tmp / "nokey.jsonl").write_text('{"text": "a red circle"}\n')
    (tmp / "blocker").write_text("a file where a folder should be")
    (tmp / "bad.json").write_text("{not json")
    (tmp / "zero.png").write_bytes(b"")
    (tmp / "garbage.jpg").write_bytes(GARBAGE)
    (tmp / "text.png").write_text("this is not an image")
    Image.new("RGB", (64, 64), "red").save(tmp / "whole.png")
    (tmp / "half.png").write_bytes(open(tmp / "whole.png", "rb").read()[:60])
    (tmp / "adir").mkdir()
    s = ["--out-dir", out]
    cases = [("sample.py", "an empty prompt", sample, [*s, "--prompt", ""], 1, ["empty prompt"]),
             ("sample.py", "a blank prompt", sample, [*s, "--prompt", "   \t "], 1, ["empty prompt"]),
             ("sample.py", "a missing prompts file", sample, [*s, "--prompts", str(tmp / "nope.txt")], 1, ["nope.txt"]),
             ("sample.py", "an empty prompts file", sample, [*s, "--prompts", str(tmp / "empty.txt")], 1,
              ["holds no prompts"]),
             ("sample.py", "a binary prompts file", sample, [*s, "--prompts", str(tmp / "binary.txt")], 1,
              ["not UTF-8"]),
             ("sample.py", "a JSON prompt line without 'prompt'", sample, [*s, "--prompts", str(tmp / "nokey.jsonl")],
              1, ["nokey.jsonl:1"]),
             ("sample.py", "--out under a file", sample,
              [*s, "--prompt", "a red circle", "--n", "1", "--steps", "2", "--out", str(tmp / "blocker" / "x.png")], 1,
              ["could not write"]),
             ("evaluate.py", "--json that is not JSON", evaluate,
              ["--task", "tokenizer", "--out-dir", out, "--n", "8", "--json", str(tmp / "bad.json")], 1,
              ["not readable JSON"]),
             ("evaluate.py", "--json in a missing folder", evaluate,
              ["--task", "tokenizer", "--out-dir", out, "--n", "8", "--json", str(tmp / "nope" / "r.json")], 1,
              ["folder does not exist"]),
             ("evaluate.py", "--prompts that is binary", evaluate,
              ["--task", "t2i", "--out-dir", out, "--prompts", str(tmp / "binary.txt")], 1, ["not UTF-8"]),
             ("train.py", "--out-dir under a file", train, [*TOK, "--out-dir", str(tmp / "blocker" / "o")], 1,
              ["cannot write to --out-dir"]),
             ("train.py", "--data that does not exist", train, [*TOK, "--out-dir", str(tmp / "d"), "--data",
                                                                  str(tmp / "nodata")], 1, ["nodata"])]
    d = copy_run(out, str(tmp / "export-payload"), t2i_pt=payload_checkpoint(PAYLOAD_RAN))
    cases += [("export.py", "a run with no checkpoint", export, ["--out-dir", str(tmp / "adir"), "--to",
                                                                 str(tmp / "e1")], 1, ["no checkpoint in"]),
              ("export.py", "--to a folder that holds files", export, ["--out-dir", out, "--to", str(tmp)], 1,
               ["not an empty folder"]),
              ("export.py", "--to a file", export, ["--out-dir", out, "--to", str(tmp / "blocker")], 1,
               ["not an empty folder"]),
              ("export.py", "a checkpoint with a pickle payload", export, ["--out-dir", d, "--to", str(tmp / "e2")], 1,
               ["refused"]),
              ("export.py", "no --to", export, ["--out-dir", out], 2, ["--to"])]
    for name, words in (("zero.png", ["not a readable image"]), ("garbage.jpg", ["not a readable image"]),
                        ("text.png", ["not a readable image"]), ("half.png", ["not a readable image"]),
                        ("adir", ["is a directory"]), ("missing.png", ["no such file"])):
        cases.append(("sample.py", f"--image {name}", sample, [*s, "--image", str(tmp / name), "--steps", "2"], 1,
                      [name, *words]))
    return cases


def all_cases(out, tmp):
    return checkpoint_cases(out, tmp) + flag_cases(out, tmp) + file_cases(out, tmp)


def test_every_bad_input_is_one_line_with_the_right_exit_code_and_loses_no_file(out, tmp_path, capsys):
    cases = all_cases(out, tmp_path)
    before = digest(os.path.dirname(out))  # the runs' out-dir and every copy the cases made
    failures = []
    for command, case, module, argv, want_code, words in cases:
        code, stdout, err = call(module, argv, capsys)
        lines = err.strip().splitlines()
        ok = (code == want_code and len(lines) == 1 and all(w in lines[0] for w in words)
              and "Traceback" not in err + stdout)
        if not ok:
            failures.append(f"{command} [{case}]: exit {code} (want {want_code}), stderr {err.strip()[-400:]!r}")
    after = digest(os.path.dirname(out))
    lost = [p for p in before if before[p] != after.get(p)]
    assert not failures, "\n".join(failures)
    assert not lost, lost  # no file changed or disappeared
    assert not os.path.exists(PAYLOAD_RAN)  # no payload ran
    assert len(cases) >= 75, len(cases)


def test_a_checkpoint_with_a_pickle_payload_is_refused_and_runs_nothing(tmp_path):
    """The shared-checkpoint attack: a 1 KB t2i.pt in an out-dir, then python sample.py in it."""
    out, marker = tmp_path / "shared", str(tmp_path / "the-payload-ran")
    out.mkdir()
    (out / "t2i.pt").write_bytes(payload_checkpoint(marker))
    pickle.loads(pickle.dumps(Payload(marker)))  # the payload is live: a plain unpickling runs it
    assert os.path.exists(marker)
    os.remove(marker)
    r = run("sample.py", "--out-dir", str(out), "--prompt", "a red circle", "--out", str(tmp_path / "x.png"),
            check=False)
    assert_one_line_error(r, "t2i.pt", "would run Python code", "refused")
    assert not os.path.exists(marker)


ODD_PROMPTS = {"10,000 characters": "a large red circle at the top " * 334, "emoji": "a 🔴 red circle 🎨 at the top ✨",
               "Chinese": "左上角有一个红色的圆", "Arabic": "دائرة حمراء كبيرة في الأعلى", "Cyrillic": "большой красный круг",
               "Hindi": "ऊपर एक बड़ा लाल घेरा", "control characters": "a red\tcircle\x07 at the top\x00",
               "one character": "a"}


def test_odd_prompts_draw_pictures(out, tmp_path, capsys):
    prompts = tmp_path / "odd.txt"
    prompts.write_text("\n".join(p.replace("\x00", "") for p in ODD_PROMPTS.values()) + "\n", encoding="utf-8")
    for name, prompt in ODD_PROMPTS.items():
        path = tmp_path / f"{name}.png"
        code, stdout, err = call(sample, ["--out-dir", out, "--prompt", prompt, "--n", "2", "--steps", "2", "--out",
                                          str(path)], capsys)
        assert code == 0 and "Traceback" not in err, (name, err)
        assert Image.open(path).size[0] > 0, name
        if name == "10,000 characters":
            assert "truncated" in stdout and len(stdout.splitlines()) == 2, stdout  # a warning, then "wrote"
    code, stdout, err = call(sample, ["--out-dir", out, "--prompts", str(prompts), "--n", "1", "--steps", "2", "--out",
                                      str(tmp_path / "all.png")], capsys)
    assert code == 0 and f"{len(ODD_PROMPTS)} prompt(s)" in stdout, err


def test_images_of_every_mode_and_size_are_captioned(out, tmp_path, capsys):
    images = {name: img for name, img in odd_images().items()}
    images.update({"one_pixel.png": Image.new("RGB", (1, 1), "red"), "thin.png": Image.new("RGB", (1, 300), "blue"),
                   "flat.png": Image.new("RGB", (2000, 3), "green"), "bilevel.png": Image.new("1", (30, 30), 1),
                   "int32.tif": Image.new("I", (20, 20), 70000), "float.tif": Image.new("F", (20, 20), 0.5),
                   "ycbcr.jpg": Image.new("RGB", (50, 40), (10, 200, 30))})
    args = []
    for name, img in images.items():
        img.save(tmp_path / name)
        args += ["--image", str(tmp_path / name)]
    code, stdout, err = call(sample, ["--out-dir", out, *args, "--steps", "2"], capsys)
    assert code == 0, err
    lines = stdout.splitlines()
    assert len(lines) == len(images) and all(line.startswith(f"{tmp_path / n}: ") for line, n in zip(lines, images))
