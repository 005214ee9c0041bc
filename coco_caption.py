"""
Caption metrics as COCO's evaluation computes them: pycocoevalcap's BLEU-1..4, ROUGE-L, CIDEr and (where Java runs)
METEOR, on text tokenized by its PTBTokenizer, or without Java by ptb_words, which gives the same tokens on the
table of cases in tests/test_i2t.py.
"""
import contextlib
import os
import re
import sys


def ptb_words(text):
    """text tokenized as pycocoevalcap's PTBTokenizer does it (Stanford CoreNLP 3.4.1's PTBTokenizer, -preserveLines
    -lowerCase, then its PUNCTUATIONS dropped), without Java: space-joined lower-case tokens. It reproduces Java's
    output on the table of cases in tests/test_i2t.py, not every corner of PTB tokenization."""
    s = text.lower().replace("\u2019", "'")  # lower-cased as -lowerCase does; a curly apostrophe (it\u2019s) is '
    s = re.sub(r"[^\u0000-\uffff]", " ", s)  # characters outside the BMP (emoji) are untokenizable to PTB: dropped
    # brackets become -lrb- -rrb- -lsb- -rsb- -lcb- -rcb-, lower-cased, so PUNCTUATIONS (in capitals) keeps them
    brackets = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
    s = re.sub(r"[()\[\]{}]", lambda m: f" {brackets[m[0]]} ", s)
    s = re.sub("[\"`\u201c\u201d\u2018\u2014\u2013]", " ", s)  # double quotes, backticks, dashes: `` '' ` --, dropped
    # a ' that quotes rather than elides is dropped: at a word's start unless it begins a clitic or a decade ('s, '50s),
    # at a word's end (dogs' -> dogs)
    s = re.sub(r"(?<!\w)'(?!(?:s|m|d|re|ve|ll|\d0s)\b)|(?<=\w)'(?!\w)", " ", s)
    s = re.sub(r"\b(y'|can(?=not\b)|gon(?=na\b)|wan(?=na\b)|got(?=ta\b))", r"\1 ", s)  # y' all, can not, gon na
    s = re.sub(r"(?<=\w)(n't|'(?:s|m|d|re|ve|ll))\b", r" \1", s)  # clitics split off: do n't, ca n't, it 's, we 've
    tokens = re.findall(r"""
        -[lr][rsc]b-                                         # a bracket, as spelled above
      | [a-z](?:\.[a-z])+\.?(?!\w)                           # dotted initials keep a final period: u.s., e.g., a.m.
      | \b(?:mr|mrs|ms|dr|st|jr|sr|vs|etc|inc|co|ltd|prof|[a-z])\.(?!\w)  # so do abbreviations, single letters: dr., c.
      | \bno\.(?=\s+\d)                                      # and no. before a number (no. 1; but "said no." ends)
      | '?\w+(?:(?:[-/.@&']|(?<=\d)[,:](?=\d))\w+)*'?      # a word, whole across - / . @ & ' inside it and , : between
                                                             # digits (3-year-old, 3.5, 1,000, 12:30, at&t, o'neil),
                                                             # with a clitic's or decade's leading ' or y's trailing one
      | [?!]+ | \.\.\. | \S                                  # anything else: one character, or a run of ?! or ...
    """, s, re.X)
    return " ".join(w for w in tokens if w not in PTB_PUNCTUATION)


def scores(references, hypotheses, meteor=True):
    """pycocoevalcap's BLEU-1..4, ROUGE-L and CIDEr (and METEOR where Java runs, unless meteor=False) of hypotheses
    (list of M str) against references (list of M lists of str). Text is tokenized as COCO's own evaluation does
    it, with the PTB tokenizer (Java); without Java, by ptb_words, a Python tokenizer that matches PTBTokenizer's
    output exactly on the table of cases tested in tests/test_i2t.py (contractions, possessives, hyphens, brackets,
    quotes, numbers, abbreviations, symbols, unicode), though not necessarily on every other text."""
    import shutil
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    java = shutil.which("java") is not None
    refs = {i: [{"caption": c} for c in r] for i, r in enumerate(references)}
    hyps = {i: [{"caption": h}] for i, h in enumerate(hypotheses)}
    if java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
        with quiet():
            refs, hyps = PTBTokenizer().tokenize(refs), PTBTokenizer().tokenize(hyps)
    else:
        refs = {i: [ptb_words(c["caption"]) for c in r] for i, r in refs.items()}
        hyps = {i: [ptb_words(c["caption"]) for c in h] for i, h in hyps.items()}
    with quiet():  # the scorers print their internals, and Java its speed
        bleu, _ = Bleu(4).compute_score(refs, hyps)
        out = {f"bleu{n + 1}": b for n, b in enumerate(bleu)}
        out["rougeL"] = float(Rouge().compute_score(refs, hyps)[0])
        out["cider"] = float(Cider().compute_score(refs, hyps)[0])
        if java and meteor:
            from pycocoevalcap.meteor.meteor import Meteor
            out["meteor"] = Meteor().compute_score(refs, hyps)[0]
    return out


@contextlib.contextmanager
def quiet():
    """Silence stdout and stderr at the file-descriptor level, so that Java subprocesses are silenced too."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


# what pycocoevalcap's PTBTokenizer drops after tokenizing
PTB_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                   "...", ";"}
