"""Token data: text files (vocabulary, bad input exits 2) and the grammar corpus (exact entropy)."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vaebench.cli import app
from vaebench.data import DataError, ground_truth, load_data
from vaebench.data.text import (
    ATTRIBUTES,
    EOS,
    PAD,
    UNK,
    GrammarFactors,
    attribute_entropy,
    build_vocab,
    read_sentences,
)
from vaebench.study.config import GrammarData, TextData, TrialConfig


def _write(tmp_path, text: str | bytes, name: str = "s.txt"):
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def test_text_file_tokens_vocab_and_layout(tmp_path):
    lines = ["The cat sat", "the dog sat", "", "a cat ran far", "the cat sat down"] * 3
    p = _write(tmp_path, "\n".join(lines) + "\n")
    ds = load_data(TextData(path=str(p), max_len=5, vocab_size=8, val_fraction=0.2), 0)
    assert ds.train.dtype == torch.int64 and ds.train.shape[1] == 6 and ds.meta.shape == (6,)
    assert ds.train.shape[0] + ds.val.shape[0] == 12  # blank lines skipped
    vocab = ds.meta.vocab
    assert vocab[:4] == ("<pad>", "<unk>", "<bos>", "<eos>") and len(vocab) == 8
    # the 4 most frequent training words, ties alphabetical; lowercased
    train_words = Counter()
    for row in ds.train.tolist():
        assert EOS in row and all(t == PAD for t in row[row.index(EOS) + 1 :])
    for words in (s.split() for s in ("the cat sat", "the dog sat", "a cat ran far", "the cat sat down")):
        train_words.update(words)
    assert set(vocab[4:]) <= set(train_words) and "cat" in vocab and "the" in vocab
    assert (ds.train == UNK).any()  # capped vocabulary: rare words are <unk>


def test_build_vocab_order():
    v = build_vocab([["b", "a", "c"], ["a", "c"], ["d"]], 6)
    assert v[4:] == ("a", "c")


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"", "empty"),
        (b"\n  \n\n", "empty"),
        (b"ok line\nbad \xff\xfe byte\n", "not UTF-8 text: byte 0xff on line 2"),
        (b"short\none two three four five six\n", "line 2 has 6 words, more than data.max_len 5"),
    ],
)
def test_bad_text_raises_data_error(tmp_path, content, pattern):
    p = _write(tmp_path, content)
    with pytest.raises(DataError, match=pattern) as e:
        read_sentences(p, 5)
    assert str(p) in str(e.value)


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"", "empty"),
        (b"ok\n\xc3\x28 broken\n", "not UTF-8"),
        (b"one\none two three four five six seven\n", "more than data.max_len"),
    ],
)
def test_validate_exits_2_on_bad_text(tmp_path, content, pattern):
    p = _write(tmp_path, content)
    study = tmp_path / "s.yaml"
    study.write_text(
        f"name: t\ndata: {{kind: text, path: {p}, max_len: 5}}\nmodel: {{kind: seq_vae, latent_dim: 2}}\n"
        "train: {epochs: 1}\nspace:\n  objective.beta: [1.0]\nseeds: [0]\n"
    )
    res = CliRunner().invoke(app, ["validate", str(study)])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert "data.path" in out and pattern in out and "Traceback" not in out


def test_grammar_entropy_is_exact():
    """H(attributes) = sum_k log |A_k|, and the sentence is a one-to-one function of the attributes, so
    H(x) is the same: enumerate every attribute combination (all equally likely), map each to its
    sentence, and compute the entropy of the resulting distribution over sentences from the counts."""
    sizes = [len(v) for v in ATTRIBUTES.values()]
    g = GrammarFactors()
    combos = np.array(list(itertools.product(*(range(s) for s in sizes))))
    sentences = [" ".join(s) for s in g.sentences(combos)]
    counts = Counter(sentences)
    p = np.array(list(counts.values()), dtype=np.float64) / len(combos)
    h_x = float(-(p * np.log(p)).sum())
    h_attr = float(np.log(len(combos)))  # uniform over the product
    assert len(counts) == len(combos) == math.prod(sizes)  # injective
    assert attribute_entropy() == pytest.approx(h_attr, abs=1e-12)
    assert h_x == pytest.approx(h_attr, abs=1e-12)
    assert attribute_entropy() == pytest.approx(math.log(512), abs=1e-12)


def test_grammar_corpus_and_factors():
    ds = load_data(GrammarData(n_samples=500), 3)
    assert ds.train.dtype == torch.int64 and ds.meta.entropy == pytest.approx(attribute_entropy())
    assert ds.meta.train_factors.shape == (ds.train.shape[0], 5)
    g = ground_truth(GrammarData())
    f = g.sample_factors(7, np.random.default_rng(0))
    obs = g.observations(f)
    assert obs.dtype == torch.int64 and obs.shape == (7, 16)
    # observations depend on the factors only: the same rows give the same tokens
    assert torch.equal(obs, g.observations(f))
    # the dataset's rows are the observations of its factors
    assert torch.equal(ds.train[:5], g.observations(ds.meta.train_factors[:5].numpy()))
    assert not (ds.train == UNK).any()
    # every attribute value appears in the sentence of its factor
    words = g.sentences(f)
    for row, w in zip(f, words):
        for values, i in zip(ATTRIBUTES.values(), row):
            assert values[i] in " ".join(w)


def test_model_kind_must_fit_data():
    with pytest.raises(ValueError, match="token data"):
        TrialConfig.model_validate({"data": {"kind": "grammar"}, "model": {"kind": "mlp"}})
    with pytest.raises(ValueError, match="token data"):
        TrialConfig.model_validate({"data": {"kind": "digits"}, "model": {"kind": "seq_vae"}})
    with pytest.raises(ValueError, match="allowed: cell"):
        TrialConfig.model_validate({"data": {"kind": "grammar"}, "model": {"kind": "seq_vae", "args": {"cells": 1}}})
    with pytest.raises(ValueError, match="model.args"):
        TrialConfig.model_validate({"model": {"kind": "mlp", "args": {"layers": 1}}})


def test_per_token_metrics_on_token_data():
    """nll_per_token = iw_nll x N / (tokens of those N examples, words and <eos>), perplexity its exp;
    neg_elbo_per_token likewise from the ELBO over the whole split; mi_ceiling = log min(B, N)."""
    from vaebench.core.metrics import evaluate
    from vaebench.core.models import build_model
    from vaebench.study.config import MetricsConfig, ModelConfig

    ds = load_data(GrammarData(n_samples=200), 0)
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(kind="seq_vae", latent_dim=2, args={"hidden": 16}), ds.meta.shape, len(ds.meta.vocab)
    )
    cfg = MetricsConfig(iw_samples=4, iw_examples=10, mi_batch_size=16)
    m = evaluate(model, ds.val, cfg, torch.Generator().manual_seed(0))
    tokens = (ds.val != PAD).sum(-1).double()
    assert m["nll_per_token"] == pytest.approx(m["iw_nll"] / float(tokens[:10].mean()), rel=1e-6)
    assert m["perplexity"] == pytest.approx(math.exp(m["nll_per_token"]), rel=1e-6)
    assert m["neg_elbo_per_token"] == pytest.approx(-m["elbo"] / float(tokens.mean()), rel=1e-6)
    assert m["mi_ceiling"] == pytest.approx(math.log(16))
    # every grammar sentence has 15 words and <eos>
    assert torch.all(tokens == 16)
