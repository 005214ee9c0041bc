"""Image-to-text: the text decoder and its vocabulary, the captioning metrics, and train.py --task textae / i2t,
sample.py --image and evaluate.py --task i2t end to end on tiny models."""
import argparse
import json
import os
import shutil

import pytest
import torch
from hypothesis import given, settings, strategies as st

import data
import text_decoder as td
from test_train import run, read_log, assert_one_line_error

CAPTIONS = ["a small red circle in the top left", "there is a big box on the right and it is blue",
            "a green triangle, tiny, at the bottom"]


def tiny_decoder(vocab, N=4, D=8):
    torch.manual_seed(0)
    return td.TextDecoder(td.DecoderConfig(**{**vars(td.PRESETS["tiny"]), "vocab_size": len(vocab), "num_tokens": N,
                                              "token_dim": D}))


# -----------------------------------------------------------------------------
# Vocabulary and packing

VOCAB = td.Vocab.build(CAPTIONS)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_vocab_round_trips_any_unicode(text):
    ids = VOCAB.encode(text)
    assert all(0 < i < len(VOCAB) for i in ids)  # never the end token, always in range
    assert VOCAB.decode(ids) == text


def test_vocab_is_small_and_keeps_caption_tokens_whole():
    assert len(VOCAB) < 300  # end token + 256 bytes + the captions' tokens
    assert VOCAB.ids[td.EOT] == VOCAB.enc.eot_token
    for c in CAPTIONS:  # a training caption never falls back to bytes: as many ids as tiktoken tokens
        assert len(VOCAB.encode(c)) == len(VOCAB.enc.encode_ordinary(c))
    assert len(VOCAB.encode("zebra")) > len(VOCAB.enc.encode_ordinary("zebra"))  # unseen: spelled with bytes
    again = td.Vocab(**VOCAB.state())
    assert again.encode(CAPTIONS[1]) == VOCAB.encode(CAPTIONS[1])


def test_pack_shifts_targets_by_one_and_counts_cut_captions():
    ids = VOCAB.encode(CAPTIONS[0])
    inputs, targets, n_cut = td.pack(VOCAB, [CAPTIONS[0], CAPTIONS[1]], max_len=len(ids) + 1)
    assert inputs[0].tolist() == [td.EOT] + ids
    assert targets[0].tolist() == ids + [td.EOT]
    assert n_cut == 1  # the second caption is longer than max_len
    assert (targets[1] != td.IGNORE).all() and td.EOT not in targets[1].tolist()
    inputs, targets, _ = td.pack(VOCAB, ["a"], max_len=5)
    assert targets[0].tolist()[2:] == [td.IGNORE] * 3 and inputs[0].tolist()[2:] == [td.EOT] * 3


def test_word_dropout_blanks_inputs_but_never_the_start():
    inputs, _, _ = td.pack(VOCAB, CAPTIONS * 100, max_len=16)
    assert td.drop_words(inputs, 0.0).equal(inputs)
    dropped = td.drop_words(inputs, 0.3, torch.Generator().manual_seed(0))
    changed = dropped != inputs
    assert (dropped[changed] == td.EOT).all() and (dropped[:, 0] == td.EOT).all()
    words = inputs[:, 1:] != td.EOT
    assert 0.25 < changed[:, 1:][words].float().mean() < 0.35  # about p of the words


# -----------------------------------------------------------------------------
# The decoder

def test_decoder_shapes_and_causal_mask():
    d = tiny_decoder(VOCAB).eval()
    z = torch.randn(2, 4, 8)
    ids = torch.randint(0, len(VOCAB), (2, 7))
    logits = d(z, ids)
    assert logits.shape == (2, 7, len(VOCAB))
    j = 4
    ids2 = ids.clone()
    ids2[:, j] = (ids[:, j] + 1) % len(VOCAB)
    logits2 = d(z, ids2)
    assert torch.allclose(logits[:, :j], logits2[:, :j], atol=1e-6)  # the future cannot change the past
    assert not torch.allclose(logits[:, j:], logits2[:, j:])
    logits3 = d(z + 1.0, ids)
    assert (logits3 - logits).abs().amax(-1).min() > 1e-4  # every position sees the prefix Z_T


def test_generate_greedy_top_k_and_end_token(monkeypatch):
    d = tiny_decoder(VOCAB).eval()
    scripts = [[5, 9, 7, td.EOT], [5, 9, td.EOT]]  # a fake model: what each sample says, token by token

    def fake_forward(z, ids):
        L = ids.shape[1]
        logits = torch.zeros(z.shape[0], L, len(VOCAB))
        for b, script in enumerate(scripts):
            logits[b, -1, script[min(L - 1, len(script) - 1)]] = 10.0
        return logits

    monkeypatch.setattr(d, "forward", fake_forward)
    z = torch.zeros(2, 4, 8)
    assert d.generate(z) == [[5, 9, 7], [5, 9]]
    assert d.generate(z, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(0)) == [[5, 9, 7], [5, 9]]
    assert d.generate(z, max_len=2) == [[5, 9], [5, 9]]  # cut at max_len, no end token needed


# -----------------------------------------------------------------------------
# Metrics (pycocoevalcap), checked by hand

def test_caption_metrics_on_a_hand_checked_example():
    from coco_caption import scores as caption_metrics
    # "a red circle at the" against "a red circle at the top": every n-gram of the hypothesis is in the reference,
    # so BLEU-4 is the brevity penalty exp(1 - 6/5) = 0.8187; ROUGE-L: LCS 5, P = 1, R = 5/6, beta = 1.2:
    # F = (1 + 1.44) P R / (R + 1.44 P) = 0.8944
    m = caption_metrics([["a red circle at the top"]], ["a red circle at the"], meteor=False)
    assert m["bleu4"] == pytest.approx(0.81873, abs=1e-4)
    assert m["rougeL"] == pytest.approx(0.89443, abs=1e-4)
    # CIDEr-D: hypotheses equal to their (distinct) references score 10 (cosine 1 for n = 1..4, times 10); nothing
    # in common scores 0. Punctuation and case do not count (PTB tokenization).
    refs = [["a red circle at the top"], ["there is a big blue box"]]
    same = caption_metrics(refs, ["A red circle, at the top.", "there is a big blue box"], meteor=False)
    assert same["cider"] == pytest.approx(10.0) and same["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert caption_metrics(refs, ["green", "purple"], meteor=False)["cider"] == pytest.approx(0.0)


def test_the_java_less_caption_tokenizer_matches_ptb_on_a_table_of_cases():
    import coco_caption
    # (caption, its tokens): the expected side is measured, not written by hand: the output of pycocoevalcap 1.2's
    # PTBTokenizer (Stanford CoreNLP 3.4.1's edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase, then
    # pycocoevalcap's PUNCTUATIONS dropped), run with OpenJDK 17 on all of these captions in one call
    cases = [
        ("A dog that doesn't like the rain.", "a dog that does n't like the rain"),
        ("The man can't swim and won't try.", "the man ca n't swim and wo n't try"),
        ("It's a sunny day and I'm outside.", "it 's a sunny day and i 'm outside"),
        ("They're playing and we've seen it, y'all.", "they 're playing and we 've seen it y' all"),
        ("The dog's ball is in the dogs' bed near James's car.",
         "the dog 's ball is in the dogs bed near james 's car"),
        ("A black-and-white photo of a man in a t-shirt.", "a black-and-white photo of a man in a t-shirt"),
        ("A 3-year-old girl holding a kite.", "a 3-year-old girl holding a kite"),
        ("A cat (a) next to [b] and {c}.", "a cat -lrb- a -rrb- next to -lsb- b -rsb- and -lcb- c -rcb-"),
        ('A sign that says "c" and \'d\' here.', "a sign that says c and 'd here"),
        ("About 3.5 miles and 1,000 people.", "about 3.5 miles and 1,000 people"),
        ("A man in the U.S. with Dr. Smith.", "a man in the u.s. with dr. smith"),
        ("Fruit, e.g. apples, at 7 a.m. today", "fruit e.g. apples at 7 a.m. today"),
        ("A red/blue flag and a 1/2 sign.", "a red/blue flag and a 1/2 sign"),
        ("Salt & pepper at an AT&T store.", "salt & pepper at an at&t store"),
        ("A sign reading $5.50 and 50% off.", "a sign reading $ 5.50 and 50 % off"),
        ("A dog is waiting...", "a dog is waiting"),
        ("A man -- smiling -- on a bench.", "a man smiling on a bench"),
        ("A bus on the street.", "a bus on the street"),
        ("A   man    riding \t a horse", "a man riding a horse"),
        ("A LARGE Elephant In The Zoo", "a large elephant in the zoo"),
        ("A café with a naïve painting.", "a café with a naïve painting"),
        ("A happy dog 🐶 on the grass 😀", "a happy dog on the grass"),
        ("The 2nd floor at 10pm.", "the 2nd floor at 10pm"),
        ("Is that a dog? Yes! Wow!!", "is that a dog yes wow !!"),
        ("A plate of food; a fork: a knife.", "a plate of food a fork a knife"),
        ("A woman in a 1950's dress at the '50s diner.", "a woman in a 1950 's dress at the '50s diner"),
        ("A 12:30 clock and a 4x4 truck.", "a 12:30 clock and a 4x4 truck"),
        ("Mr. and Mrs. Smith at St. Louis, etc.", "mr. and mrs. smith at st. louis etc."),
        ("The No. 1 spot, said no.", "the no. 1 spot said no"),
        ("He cannot go, he's gonna wait.", "he can not go he 's gon na wait"),
        ("An O'Neil's pub and a ma'am.", "an o'neil 's pub and a ma'am"),
        ("He said 'hello' to the dog's 'owner'.", "he said hello to the dog 's owner"),
        ("it’s a dog’s toy, a ‘curly’ “quote”", "it 's a dog 's toy a curly quote"),
        ("A co-op at the mid-1990s with a 2.5-inch screw.", "a co-op at the mid-1990s with a 2.5-inch screw"),
        ("Two cats.... and a dog ... sleeping", "two cats and a dog sleeping"),
        ("a man--smiling — at the end .", "a man smiling at the end"),
        ("☀ A sun, ♥ a heart and 30° heat", "☀ a sun ♥ a heart and 30 ° heat"),
        ("Vitamin c. in a J.K. Rowling book from the U.S.A.", "vitamin c. in a j.k. rowling book from the u.s.a."),
        ("I'd say you'll go, it isn't here.", "i 'd say you 'll go it is n't here"),
        ("an e-mail to a@b.com from www.example.com", "an e-mail to a@b.com from www.example.com"),
    ]
    for caption, expected in cases:
        assert coco_caption.ptb_words(caption) == expected, caption
    if shutil.which("java"):  # and the table still is what Java makes of it
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
        with coco_caption.quiet():
            live = PTBTokenizer().tokenize({i: [{"caption": c}] for i, (c, _) in enumerate(cases)})
        assert [live[i][0] for i in range(len(cases))] == [e for _, e in cases]


# -----------------------------------------------------------------------------
# End to end on tiny models

TOK = ["--task", "tokenizer", "--preset", "tiny", "--num-train", "256", "--batch-size", "16", "--max-steps", "30",
       "--lr", "3e-3", "--sample-every", "1000"]
AE = ["--task", "textae", "--preset", "tiny", "--num-train", "512", "--batch-size", "32", "--lr", "3e-3",
      "--log-every", "10", "--sample-every", "60", "--save-every", "1000"]
I2T = ["--task", "i2t", "--preset", "tiny", "--num-train", "256", "--batch-size", "32", "--lr", "3e-3",
       "--log-every", "5", "--sample-every", "40", "--save-every", "1000"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("i2t") / "out")
    run("train.py", *TOK, "--out-dir", out)
    run("train.py", *AE, "--max-steps", "120", "--out-dir", out)
    run("train.py", *I2T, "--max-steps", "40", "--out-dir", out)
    return out


def test_textae_learns_the_captions(trained):
    log = read_log(trained, "textae")
    train_recs = [r for r in log if "ce" in r]
    assert train_recs[-1]["ce"] < 0.5 * train_recs[0]["ce"], (train_recs[0], train_recs[-1])
    assert train_recs[-1]["token_acc"] > train_recs[0]["token_acc"]
    evals = [r for r in log if "val_ce" in r]
    assert [r["step"] for r in evals] == [60, 120] and evals[1]["val_ce"] < evals[0]["val_ce"]
    ck = torch.load(os.path.join(trained, "textae.pt"), weights_only=True)
    assert ck["finished"] and ck["model_config"]["decoder"]["vocab_size"] == len(ck["model_config"]["vocab"]["ids"])
    assert ck["model_config"]["projector"]["num_tokens"] == 8  # the tiny tokenizer's N, read from tokenizer.pt
    assert ck["ema"]["latent_scale"].item() != 1.0  # measured at the end
    assert os.path.getsize(os.path.join(trained, "textae_preview.txt")) > 0


def test_i2t_trains_and_logs_what_it_should(trained):
    log = read_log(trained, "i2t")
    train_recs = [r for r in log if "loss" in r]
    assert train_recs[-1]["flow"] < 0.8 * train_recs[0]["flow"]
    assert "flow_t0" in train_recs[-1]
    evals = [r for r in log if "val_flow" in r]
    assert [r["step"] for r in evals] == [40] and 0 <= evals[0]["val_acc_all"] <= 1
    ck = torch.load(os.path.join(trained, "i2t.pt"), weights_only=True)
    assert ck["finished"] and ck["model_config"]["textae"].startswith("textae-step120")
    assert os.path.getsize(os.path.join(trained, "i2t_preview.png")) > 0


def test_textae_resume_is_exact(trained, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for d in (a, b):
        os.makedirs(d)
        shutil.copy(os.path.join(trained, "tokenizer.pt"), d)
    run("train.py", *AE, "--max-steps", "12", "--log-every", "2", "--out-dir", a)
    run("train.py", *AE, "--max-steps", "12", "--log-every", "2", "--out-dir", b, "--stop-at-step", "6")
    run("train.py", *AE, "--max-steps", "12", "--log-every", "2", "--out-dir", b, "--resume")
    losses = lambda d: [(r["step"], r["loss"]) for r in read_log(d, "textae") if "loss" in r]
    assert losses(a) == losses(b) and len(losses(a)) == 6
    ea = torch.load(os.path.join(a, "textae.pt"), weights_only=True)["ema"]
    eb = torch.load(os.path.join(b, "textae.pt"), weights_only=True)["ema"]
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


def test_sample_captions_images_of_every_kind(trained, tmp_path):
    import data
    img = data.render({"shape": "circle", "color": "red", "size": "large", "position": "top"}, size=64)
    paths = {"rgb.png": img, "grey.png": img.convert("L"), "rgba.png": img.convert("RGBA"),
             "palette.png": img.convert("P"), "wide.jpg": img.resize((300, 80))}
    for name, im in paths.items():
        im.save(tmp_path / name)
    args = [a for name in paths for a in ("--image", str(tmp_path / name))]
    r = run("sample.py", "--out-dir", trained, *args, "--steps", "4")
    lines = r.stdout.splitlines()  # "PATH: caption" (a tiny model's caption may be empty)
    assert len(lines) == len(paths) and all(line.startswith(f"{tmp_path / n}: ") for line, n in zip(lines, paths))
    assert r.stdout == run("sample.py", "--out-dir", trained, *args, "--steps", "4").stdout  # deterministic
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    assert_one_line_error(run("sample.py", "--out-dir", trained, "--image", str(tmp_path / "broken.png"),
                              check=False), "broken.png", "not a readable image")
    assert_one_line_error(run("sample.py", "--out-dir", trained, "--image", str(tmp_path / "nope.png"),
                              check=False), "nope.png", "no such file")
    assert_one_line_error(run("sample.py", "--out-dir", trained, "--image", str(tmp_path), check=False),
                          "is a directory")
    assert_one_line_error(run("sample.py", "--out-dir", str(tmp_path), "--image", str(tmp_path / "rgb.png"),
                              check=False), "i2t.pt", "python train.py --task i2t")


def test_an_exported_run_captions_the_same(trained, tmp_path):
    """export.py, then the exported folder in place of the out-dir: the same text latents and captions, bit for bit."""
    import data
    import pipeline
    exported = str(tmp_path / "shared")
    r = run("export.py", "--out-dir", trained, "--to", exported)
    assert f"wrote {exported}: tokenizer, textae, i2t" in r.stdout
    assert not [f for _, _, files in os.walk(exported) for f in files if f.endswith(".pt")]  # no pickle went along
    test = data.ShapesDataset("test", size=16, n=6, seed=0)
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    a, b = pipeline.load_image_to_text(trained), pipeline.load_image_to_text(exported)
    assert torch.equal(a.latents(images, steps=4), b.latents(images, steps=4))
    assert a.captions(images, steps=4) == b.captions(images, steps=4)
    data.render(test.attrs(0), size=32).save(tmp_path / "img.png")
    outs = [run("sample.py", "--out-dir", d, "--image", str(tmp_path / "img.png")).stdout for d in (trained, exported)]
    assert outs[0] == outs[1]

def test_evaluate_i2t_reports_everything(trained, tmp_path):
    res_path = str(tmp_path / "r.json")
    r = run("evaluate.py", "--task", "i2t", "--out-dir", trained, "--n", "40", "--steps", "4", "--json", res_path)
    res = json.load(open(res_path))["i2t"]
    for k in ("acc_all", "acc_all_seen", "acc_all_heldout", "acc_shape", "acc_color", "acc_size", "acc_position",
              "bleu4", "rougeL", "cider", "ae_exact", "ae_mean_ref", "probe_real_zi_heldout", "probe_target_zt_heldout",
              "probe_flow_zt_heldout", "acc_all_background_mid_grey", "acc_all_hue_10", "acc_all_blur_0.8"):
        assert 0.0 <= res[k] <= 10.0, (k, res[k])
    assert res["n"] == 40 and len(res["examples"]) == 5 and "examples" in r.stdout
    assert os.path.getsize(os.path.join(trained, "i2t_eval.png")) > 0


def test_i2t_trains_what_it_needs_first(tmp_path, monkeypatch, capsys):
    import train
    monkeypatch.setitem(train.TASK_DEFAULTS, "tokenizer", {**train.TASK_DEFAULTS["tokenizer"], "preset": "tiny",
                                                           "max_steps": 4, "batch_size": 8})
    monkeypatch.setitem(train.TASK_DEFAULTS, "textae", {**train.TASK_DEFAULTS["textae"], "preset": "tiny",
                                                        "max_steps": 4, "batch_size": 8})
    out = str(tmp_path / "fresh")
    train.main([*I2T, "--max-steps", "3", "--out-dir", out, "--sample-every", "1000"])
    printed = capsys.readouterr().out
    assert "notice: no trained tokenizer" in printed and "notice: no trained textae" in printed
    assert [torch.load(os.path.join(out, f"{t}.pt"), weights_only=True)["step"] for t in
            ("tokenizer", "textae", "i2t")] == [4, 4, 3]


# -----------------------------------------------------------------------------
# Decoding the mean of an image's captions

def test_group_mean_ignores_padding():
    from text_tasks import group_mean
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 20.0]])
    groups = torch.tensor([[0, 1, -1], [2, -1, -1], [0, 1, 2]])
    assert torch.allclose(group_mean(x, groups), torch.tensor([[2.0, 3.0], [10.0, 20.0], [14 / 3, 26 / 3]]))


def test_textae_loss_adds_the_mean_term_only_when_asked():
    vocab = td.Vocab.build(CAPTIONS)
    from projector import ProjectorConfig
    torch.manual_seed(0)
    pcfg = ProjectorConfig(text_dim=12, num_tokens=4, token_dim=8, width=16, depth=1, heads=2)
    ae = td.TextAutoencoder(pcfg, td.DecoderConfig(**{**vars(td.PRESETS["tiny"]), "vocab_size": len(vocab),
                                                      "num_tokens": 4, "token_dim": 8}))
    inputs, targets, _ = td.pack(vocab, CAPTIONS, 24)
    text = torch.randn(3, 2, 4, 12)  # 3 images, 2 captions each
    chosen = torch.tensor([[True, True], [True, False], [True, True]])
    plain, stats = ae(text, chosen, inputs, targets, mean_weight=0.0)
    assert "ce_mean" not in stats and torch.allclose(plain, stats["ce"])
    both, stats = ae(text, chosen, inputs, targets, mean_weight=0.5)
    mean, _ = ae.projector(text.flatten(0, 1))
    mean = mean.view(3, 2, 4, 8)
    zbar = torch.stack([mean[0].mean(0), mean[1, 0], mean[2].mean(0)])  # unchosen captions stay out of the mean
    expected, _ = ae.cross_entropy(zbar, inputs, targets)
    assert torch.allclose(stats["ce_mean"], expected)
    assert torch.allclose(both, stats["ce"] + 0.5 * expected)
    # one caption per image (K = 1): the plain autoencoder, whatever the weight
    loss, stats = ae(text[:, :1], chosen[:, :1], inputs, targets, mean_weight=1.0)
    assert "ce_mean" not in stats


class _NamingEncoder:
    """Stands in for the text encoder: caption -> an embedding that holds the caption's number in `names`."""
    name, num_tokens = "naming", 2

    def __init__(self):
        self.names = []

    def count_truncated(self, captions):
        return 0

    def __call__(self, captions):
        for c in captions:
            if c not in self.names:
                self.names.append(c)
        return torch.tensor([float(self.names.index(c)) for c in captions]).view(-1, 1, 1).expand(-1, 2, 3)


def test_textae_recolor_swaps_one_colour_word_for_all_captions_of_an_image():
    from text_tasks import TextAETask
    task = object.__new__(TextAETask)
    task.device, task.encoder = "cpu", _NamingEncoder()
    task.unique = ["a big red box at the top", "a red square, large, at the top", "a tiny green disc on the left"]
    task.groups = torch.tensor([[0, 1], [2, -1]])  # image 0: two captions of one large red square; image 1: one
    task.text = task.encoder(task.unique)
    own = [[data.parse_caption(task.unique[k]) for k in ks] for ks in ([0, 1], [2])]
    task.recolor_table = task.add_recolored(None)
    assert len(task.unique) == 3 * len(data.COLORS) and set(task.unique) >= {"a tiny blue disc on the left"}
    assert [task.unique[k] for k in task.groups[0]] == ["a big red box at the top", "a red square, large, at the top"]
    vocab = td.Vocab.build(task.unique)
    task.inputs, task.targets, _ = td.pack(vocab, task.unique, 64)
    for recolor in (0.0, 1.0):
        task.args = argparse.Namespace(word_dropout=0.0, recolor=recolor)
        colors = set()
        for seed in range(40):
            torch.manual_seed(seed)
            b = task.batch(torch.tensor([0, 1]))
            for row in range(2):
                cols = [task.encoder.names[int(v)] for v in b["text"][row, b["chosen"][row], 0, 0]]
                written = vocab.decode([t for t in b["targets"][row].tolist() if t != td.IGNORE])
                assert written == cols[0]  # the caption written is the first one averaged
                read = [data.parse_caption(c) for c in cols]
                assert len({r["color"] for r in read}) == 1  # one colour for all captions of the image
                for r in read:  # and nothing but the colour changed
                    assert {k: v for k, v in r.items() if k != "color"} == {k: v for k, v in own[row][0].items()
                                                                             if k != "color"}
                colors.add(read[0]["color"])
        assert colors == ({"red", "green"} if recolor == 0 else set(data.COLORS)), (recolor, colors)


def test_textae_batch_writes_one_caption_and_averages_captions_of_its_image():
    from text_tasks import TextAETask
    task = object.__new__(TextAETask)  # just the batching: no encoder, no data set
    task.device = "cpu"
    task.args = argparse.Namespace(word_dropout=0.0, recolor=0.0)
    task.groups = torch.tensor([[0, 1, 2], [3, -1, -1], [4, 5, -1]])  # image 1 has one caption, image 2 two
    task.text = torch.arange(6.0).view(6, 1, 1).expand(6, 2, 3).half()  # each embedding holds its caption's index
    captions = [f"caption number {k}" * (k + 1) for k in range(6)]
    task.inputs, task.targets, _ = td.pack(td.Vocab.build(captions), captions, 64)
    seen = set()
    for seed in range(30):
        torch.manual_seed(seed)
        b = task.batch(torch.tensor([0, 1, 2]))
        ids = b["text"][:, :, 0, 0].long()  # (B, K): which caption sits in each column
        for row, (cols, chosen) in enumerate(zip(ids, b["chosen"])):
            own = set(task.groups[row][task.groups[row] >= 0].tolist())
            assert chosen[0] and set(cols[chosen].tolist()) <= own  # the written caption is averaged, with its own
            assert int(chosen.sum()) == (1 if len(own) == 1 else len(set(cols[chosen].tolist()))) >= min(2, len(own))
            L = b["targets"].shape[1]
            assert torch.equal(b["targets"][row], task.targets[cols[0], :L])  # column 0 is the caption written
            seen.add((row, int(cols[0]), int(chosen.sum())))
    assert {(0, c) for c in range(3)} <= {(r, c) for r, c, _ in seen}  # every caption of image 0 gets written
    assert {k for r, _, k in seen if r == 0} == {2, 3}  # and 2 or 3 of them averaged
