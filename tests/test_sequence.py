"""The sequence VAE: teacher-forced likelihood against a step-by-step computation, pads, word dropout,
decoding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vaebench.core.models.sequence import BOS, EOS, PAD, UNK, SequenceVAE, detokenize, text_artifact
from vaebench.study.config import LOGVAR_MAX, LOGVAR_MIN

V, T, J = 12, 7, 3


def _model(cell: str = "gru", z_feed: str = "both", p: float = 0.0, seed: int = 0) -> SequenceVAE:
    torch.manual_seed(seed)
    return SequenceVAE(
        event_shape=(T,), latent_dim=J, vocab_size=V, cell=cell, embed=8, hidden=16, z_feed=z_feed, word_dropout=p
    )


def _batch() -> torch.Tensor:
    """Three sentences of lengths 2, 4 and 6 words, each closed by <eos> and padded to T."""
    rows = [[5, 6, EOS], [4, 7, 8, 9, EOS], [4, 5, 6, 7, 8, 9, EOS]]
    return torch.tensor([r + [PAD] * (T - len(r)) for r in rows])


def _stepwise_log_likelihood(model: SequenceVAE, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """sum_t log p(x_t | x_<t, z) computed one token at a time per example, in float64, stopping at
    the first pad: an independent path through the decoder's cell (sequence length 1 each call)."""
    out = torch.zeros(x.shape[0], dtype=torch.float64)
    for b in range(x.shape[0]):
        state = model.initial_state(z[b : b + 1])
        inp = torch.tensor([[BOS]])
        for t in range(T):
            if x[b, t] == PAD:
                break
            logits, state = model.step_logits(inp, z[b : b + 1], state)
            out[b] += F.log_softmax(logits[0, 0].double(), -1)[x[b, t]]
            inp = x[b : b + 1, t : t + 1]
    return out


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("z_feed", ["init", "input", "both"])
def test_teacher_forced_equals_step_by_step(cell, z_feed):
    model = _model(cell, z_feed).eval()
    x, z = _batch(), torch.randn(3, J)
    torch.testing.assert_close(
        model.log_likelihood(x, z).double(), _stepwise_log_likelihood(model, x, z), atol=1e-5, rtol=1e-5
    )


def test_pad_positions_contribute_nothing():
    """Changing what sits after <eos> (pads replaced by other pads, or by a longer padded length) leaves
    log p(x|z) and the posterior unchanged; the per-token log-probs at pads are exactly 0."""
    model = _model().eval()
    x, z = _batch(), torch.randn(3, J)
    lp = model.token_log_probs(x, z)
    assert torch.all(lp[x == PAD] == 0) and torch.all(lp[x != PAD] < 0)
    longer = SequenceVAE(event_shape=(T + 4,), latent_dim=J, vocab_size=V, embed=8, hidden=16)
    longer.load_state_dict(model.state_dict())
    longer.eval()
    xl = F.pad(x, (0, 4), value=PAD)
    torch.testing.assert_close(longer.log_likelihood(xl, z), model.log_likelihood(x, z))
    torch.testing.assert_close(longer.encode(xl)[0], model.encode(x)[0])
    # the encoder ignores the pads: the same sentence in a one-row batch
    torch.testing.assert_close(model.encode(x[:1])[0], model.encode(x)[0][:1])


def test_word_dropout_zero_and_one():
    x = _batch()
    shifted = torch.cat([torch.full((3, 1), BOS), x[:, :-1]], dim=1)
    m0 = _model(p=0.0).train()
    assert torch.equal(m0.decoder_inputs(x), shifted)
    m1 = _model(p=1.0).train()
    inp = m1.decoder_inputs(x, torch.Generator().manual_seed(0))
    assert torch.all(inp[:, 0] == BOS)
    assert torch.all(inp[:, 1:][shifted[:, 1:] != PAD] == UNK)  # every word input replaced
    assert torch.all(inp[shifted == PAD] == PAD)
    # p = 1: the likelihood no longer depends on the words read, only on the targets (and z)
    z = torch.randn(3, J)
    other = x.clone()
    other[x == 5] = 11  # change some words: targets change too, so compare through the unk inputs
    lp = m1.token_log_probs(x, z)
    logits, _ = m1.step_logits(inp, z, m1.initial_state(z))
    want = torch.gather(F.log_softmax(logits, -1), -1, x[..., None]).squeeze(-1).masked_fill(x == PAD, 0)
    torch.testing.assert_close(lp, want)
    # in eval mode nothing is dropped, whatever p
    assert torch.equal(m1.eval().decoder_inputs(x), shifted)


def test_word_dropout_fraction():
    m = _model(p=0.3).train()
    x = torch.randint(4, V, (2000, T))
    inp = m.decoder_inputs(x, torch.Generator().manual_seed(0))[:, 1:]
    frac = float((inp == UNK).float().mean())
    assert abs(frac - 0.3) < 0.01


def test_sample_dims_are_folded():
    model = _model().eval()
    x, z = _batch(), torch.randn(5, 3, J)
    ll = model.log_likelihood(x, z)
    assert ll.shape == (5, 3)
    torch.testing.assert_close(ll[2], model.log_likelihood(x, z[2]))


def test_generate_greedy_and_sampled():
    model = _model().eval()
    z = torch.randn(4, J)
    g = model.greedy(z)
    assert g.shape == (4, T) and g.dtype == torch.long
    assert torch.equal(g, model.greedy(z))
    for row in g.tolist():  # an <eos> closes every row, pads only after it
        k = row.index(EOS)
        assert all(t == PAD for t in row[k + 1 :]) and PAD not in row[:k] and BOS not in row
    a = model.sample(z, torch.Generator().manual_seed(1))
    b = model.sample(z, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    # greedy: each token is the most likely one given the greedy prefix (pads excluded)
    logits, _ = model.step_logits(torch.cat([torch.full((4, 1), BOS), g[:, :-1]], 1), z, model.initial_state(z))
    logits[..., [PAD, BOS]] = -float("inf")
    first = logits[:, 0].argmax(-1)
    assert torch.equal(g[:, 0], first)


def test_detokenize_and_text_artifact():
    vocab = ("<pad>", "<unk>", "<bos>", "<eos>", "the", "cat", "sat", "on", "a", "mat", "red", "dog")
    assert detokenize(_batch(), vocab) == ["cat sat", "the on a mat", "the cat sat on a mat"]
    text = text_artifact(_model(), _batch(), vocab, n=3)
    assert "data:  the cat sat on a mat" in text and "# prior samples, sampled" in text


def test_bad_settings():
    with pytest.raises(ValueError, match="cell"):
        SequenceVAE(event_shape=(T,), latent_dim=J, vocab_size=V, cell="rnn")
    with pytest.raises(ValueError, match="word_dropout"):
        SequenceVAE(event_shape=(T,), latent_dim=J, vocab_size=V, word_dropout=1.5)
    with pytest.raises(ValueError, match="token sequences"):
        SequenceVAE(event_shape=(1, 8, 8), latent_dim=J, vocab_size=V)


def test_factorised_decoder_ignores_the_prefix():
    """decoder factorised: log p(x|z) = sum_t log softmax(logits_t(z))[x_t] over non-pad t; changing an
    earlier word leaves the later positions' terms unchanged."""
    torch.manual_seed(0)
    m = SequenceVAE(event_shape=(T,), latent_dim=J, vocab_size=V, decoder="factorised", hidden=16).eval()
    x, z = _batch(), torch.randn(3, J)
    want = torch.gather(F.log_softmax(m.factorised(z), -1), -1, x[..., None]).squeeze(-1).masked_fill(x == PAD, 0)
    torch.testing.assert_close(m.log_likelihood(x, z), want.sum(-1))
    y = x.clone()
    y[:, 0] = 10
    torch.testing.assert_close(m.token_log_probs(y, z)[:, 1:], m.token_log_probs(x, z)[:, 1:])
    g = m.greedy(z)
    assert g.shape == (3, T) and (g == EOS).any(-1).all()


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_encoder_equals_the_packed_sequence_state(cell):
    """The encoder reads each row's RNN output at its last non-pad position; for rows of lengths 1 to 7
    (an empty row counts as length 1) that equals the final state of the RNN run over the packed
    sequence (``pack_padded_sequence``: the pads never read), computed here independently."""
    model = _model(cell).eval()
    rows = [[EOS], [5, EOS], [5, 6, EOS], [4, 7, 8, 9, EOS], [4, 5, 6, 7, 8, 9, EOS], []]
    x = torch.tensor([r + [PAD] * (T - len(r)) for r in rows])
    lengths = (x != PAD).sum(-1).clamp(min=1)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        model.embedding(x), lengths, batch_first=True, enforce_sorted=False
    )
    _, state = model.encoder(packed)
    h = (state[0] if cell == "lstm" else state)[-1]
    mu, logvar = model.to_posterior(h).chunk(2, dim=-1)
    got_mu, got_logvar = model.encode(x)
    torch.testing.assert_close(got_mu, mu, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got_logvar, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX), atol=1e-6, rtol=1e-5)
    assert not torch.equal(got_mu[1], got_mu[4])  # rows of different lengths: different states
