"""projector.py: the frozen text encoders (embedded MiniLM, a local CLIP), the cache, the projector, InfoNCE."""
import json
import math

import pytest
import torch

import projector as pj
from common import UserError


@pytest.fixture(scope="module")
def minilm():
    return pj.TextEncoder(num_tokens=16)


def test_minilm_encoder_pads_and_truncates_to_n_tokens(minilm):
    e = minilm(["a small red circle at the top", "a big blue box " * 20])
    assert e.shape == (2, 16, 384) and e.dtype == torch.float32
    assert minilm.count_truncated(["a small red circle at the top", "a big blue box " * 20]) == 1
    assert not torch.allclose(e[0], minilm(["a small green circle at the top"])[0])  # the words matter


def test_caption_embedding_cache(minilm, tmp_path):
    caps = ["a tiny red triangle on the left", "a big green disc in the middle"]
    first = pj.embed_captions(minilm, caps, cache_dir=str(tmp_path))
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and first.shape == (2, 16, 384) and first.dtype == torch.float16
    again = pj.embed_captions(minilm, caps, cache_dir=str(tmp_path))
    assert torch.equal(first, again) and list(tmp_path.iterdir()) == files  # read back, not recomputed
    pj.embed_captions(minilm, caps[:1], cache_dir=str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 2  # other captions, another key
    assert torch.allclose(first.float(), minilm(caps), atol=1e-2)


def test_missing_encoder_is_one_clear_error(tmp_path):
    with pytest.raises(UserError) as e:
        pj.TextEncoder(str(tmp_path / "no-such-model"))
    assert "no-such-model" in str(e.value) and "\n" not in str(e.value)


def make_tiny_clip(folder):
    """A randomly initialised CLIP text model with a 40-token BPE vocabulary, saved like a real one."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    words = ["a", "small", "big", "red", "blue", "circle", "box", "at", "the", "top", "left", "on"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    for w in words:
        vocab.setdefault(w + "</w>", len(vocab))
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(str(folder))
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1)
    CLIPTextModel(cfg).save_pretrained(str(folder))


def test_a_local_clip_text_model_loads_and_encodes(tmp_path):
    make_tiny_clip(tmp_path / "clip")
    enc = pj.TextEncoder(str(tmp_path / "clip"), num_tokens=10)
    assert type(enc.model).__name__ == "CLIPTextModel" and enc.dim == 32
    e = enc(["a small red circle", "a big blue box on the left"])
    assert e.shape == (2, 10, 32) and torch.isfinite(e).all()
    assert not torch.allclose(e[0], e[1])


def test_projector_shapes_sampling_and_mean():
    torch.manual_seed(0)
    cfg = pj.ProjectorConfig(text_dim=24, num_tokens=6, token_dim=4, width=32, depth=1, heads=2, align_hidden=16)
    proj, head = pj.TextProjector(cfg), pj.AlignHead(cfg)
    text = torch.randn(3, 6, 24)
    mean, logvar = proj(text)
    assert mean.shape == logvar.shape == (3, 6, 4)
    assert torch.equal(proj.sample(text, use_mean=True), mean)
    assert not torch.equal(proj.sample(text), mean)  # Z_T is sampled, also at inference
    assert head(text).shape == (3, 6, 4)
    assert abs(head.logit_scale.exp().item() - 1 / 0.07) < 1e-4


def test_info_nce_matches_a_hand_computation():
    torch.manual_seed(0)
    a, b = torch.randn(4, 3, 2), torch.randn(4, 3, 2)
    s = torch.tensor(math.log(10.0))
    an = [x / x.norm() for x in a.flatten(1)]
    bn = [x / x.norm() for x in b.flatten(1)]
    sim = [[10.0 * float(an[i] @ bn[j]) for j in range(4)] for i in range(4)]
    ce = lambda rows: sum(-rows[i][i] + math.log(sum(math.exp(v) for v in rows[i])) for i in range(4)) / 4
    expected = 0.5 * (ce(sim) + ce([list(r) for r in zip(*sim)]))
    assert abs(pj.info_nce(a, b, s).item() - expected) < 1e-5
    assert pj.info_nce(a, a, torch.tensor(math.log(100.0))) < 0.01 < pj.info_nce(a, b, s)  # matched pairs win
