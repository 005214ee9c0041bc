"""Property-based tests (hypothesis) of what handles text: prompt files, the Shapes caption parser, the text encoder on
any string, and the decoder's vocabulary (its round trip is in test_i2t.py)."""
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import data
import sample
import text_decoder as td
from common import UserError

# Text as users type it: any Unicode but surrogates (which no file can hold); some strategies drop line breaks.
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)
LINE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
               max_size=200)
ATTRS = st.fixed_dictionaries({k: st.sampled_from(v) for k, v in data.ATTRIBUTES.items()})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(LINE.filter(lambda s: not s.strip().startswith("{")), max_size=20))  # "{...": a JSON line
def test_a_prompts_file_of_plain_lines_reads_back_its_non_blank_lines(tmp_path, lines):
    path = tmp_path / "p.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    want = [line.strip() for line in lines if line.strip()]
    if not want:
        with pytest.raises(UserError, match="holds no prompts"):
            sample.read_prompts(str(path))
        return
    assert sample.read_prompts(str(path)) == want


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ANY_TEXT, min_size=1, max_size=10))
def test_json_prompt_lines_round_trip_any_text(tmp_path, prompts):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p}) for p in prompts) + "\n", encoding="utf-8")
    assert sample.read_prompts(str(path)) == prompts  # newlines, quotes, emoji, control characters: all kept


@settings(max_examples=300, deadline=None)
@given(ATTRS, st.integers(0, 2 ** 32 - 1))
def test_every_caption_parses_back_to_its_attributes(attrs, seed):
    caption = data.make_caption(attrs, np.random.default_rng(seed))
    assert data.parse_caption(caption) == attrs, caption
    assert data.parse_caption(caption.upper() + " !!") == attrs  # case and punctuation do not matter


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_the_parser_reads_any_text_without_failing(text):
    out = data.parse_caption(text)
    assert set(out) == set(data.ATTRIBUTES)
    assert all(v is None or v in data.ATTRIBUTES[k] for k, v in out.items())


@pytest.fixture(scope="module")
def minilm():
    import projector
    return projector.TextEncoder(num_tokens=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ANY_TEXT, min_size=1, max_size=4))
def test_the_text_encoder_takes_any_text(minilm, captions):
    emb = minilm(captions)
    assert emb.shape == (len(captions), 8, minilm.dim) and torch.isfinite(emb).all()
    lengths = [len(ids) for ids in minilm.tokenizer(captions, verbose=False)["input_ids"]]
    assert minilm.count_truncated(captions) == sum(n > 8 for n in lengths)


VOCAB = td.Vocab.build(["a small red circle in the top left", "a big blue box on the right"])


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_vocab_ids_stay_in_range_and_bytes_cover_what_it_has_not_seen(text):
    ids = VOCAB.encode(text)
    assert all(0 <= i < len(VOCAB) for i in ids)
    assert VOCAB.decode(ids) == text
