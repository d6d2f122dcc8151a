"""A sequence VAE over token sequences (Bowman et al. 2016, Generating Sentences from a Continuous Space).

An RNN encoder reads the tokens and gives q(z|x); an RNN decoder models the tokens one after another,

    log p(x|z) = sum_t log p(x_t | x_<t, z)   over the non-pad positions t,

teacher-forced: the decoder reads <bos>, x_1, ..., x_{T-1}. An RNN language model explains a
sentence well without z, so at beta 1 the KL term tends to 0 (Bowman et al.); word dropout
replaces a fraction ``word_dropout`` of the decoder's inputs with <unk> while training, so the
decoder must lean on z for what it cannot read.

Token layout (``vaebench.data.text``): x [B, T] int64, each row the sentence's token ids, then
<eos>, then <pad> up to T. Ids 0..3 are <pad>, <unk>, <bos>, <eos> (``SPECIALS``). Pad positions
contribute nothing to log p(x|z) and are never read by the encoder.

Meets the contract of ``vaebench.core.protocol``: ``SequenceVAE(event_shape=(T,), latent_dim=J,
vocab_size=V, **args)``; ``encode(x)``, ``log_likelihood(x, z)`` (z may carry leading sample dims,
folded into the batch), ``sample(z, generator)`` and ``greedy(z)`` decode token sequences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vaebench.core.models.layers import GRU, LSTM, Embedding, Linear, MemberAware, NotPackable
from vaebench.study.config import LOGVAR_MAX, LOGVAR_MIN

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
CELLS = {"gru": GRU, "lstm": LSTM}  # member-aware (vaebench.core.models.layers); solo the torch.nn ops
Z_FEEDS = ("init", "input", "both")
DECODERS = ("rnn", "factorised")


class SequenceVAE(MemberAware, nn.Module):
    """Embedding + GRU/LSTM encoder, GRU/LSTM decoder fed by z (or a factorised decoder).

    Settings (``model.args``): ``vocab_size`` (from the data's vocabulary), ``cell`` gru or lstm,
    ``embed`` and ``hidden`` sizes, ``z_feed``: init (z sets the decoder's initial state through a
    linear layer), input (z concatenated to every step's input embedding) or both;
    ``word_dropout`` p in [0, 1]: while training each decoder input after <bos> is replaced by <unk>
    with probability p (p = 0: never, p = 1: always; the targets are never changed, and in eval
    mode nothing is replaced). ``decoder: factorised`` is the baseline without autoregression:
    every position's token drawn independently given z, logits = W_t MLP(z) (the RNN decoder,
    z_feed and word dropout then do not apply).

    Its layers are member-aware (``vaebench.core.models.layers``): solo they are the torch.nn
    layers; stacked (``stack_members``, the training core's fused path) every method takes a leading
    member axis, x [M, B, T] and z [M, B, J]. A model with word dropout does not stack: its masks
    come from the global generator, so a packed member could not draw its solo trial's."""

    def __init__(
        self,
        event_shape: tuple[int, ...],
        latent_dim: int,
        vocab_size: int,
        cell: str = "gru",
        embed: int = 32,
        hidden: int = 64,
        z_feed: str = "both",
        word_dropout: float = 0.0,
        decoder: str = "rnn",
    ):
        super().__init__()
        event_shape = tuple(event_shape)
        if len(event_shape) != 1:
            raise ValueError(f"model 'seq_vae' takes token sequences [T], got examples of shape {event_shape}")
        if cell not in CELLS:
            raise ValueError(f"model 'seq_vae': cell must be one of {', '.join(CELLS)}, got {cell!r}")
        if z_feed not in Z_FEEDS:
            raise ValueError(f"model 'seq_vae': z_feed must be one of {', '.join(Z_FEEDS)}, got {z_feed!r}")
        if not 0.0 <= word_dropout <= 1.0:
            raise ValueError(f"model 'seq_vae': word_dropout must be in [0, 1], got {word_dropout}")
        if decoder not in DECODERS:
            raise ValueError(f"model 'seq_vae': decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        if vocab_size <= len(SPECIALS):
            raise ValueError(f"model 'seq_vae': vocab_size must exceed the {len(SPECIALS)} special tokens")
        self.event_shape, self.latent_dim, self.vocab_size = event_shape, latent_dim, vocab_size
        self.cell, self.z_feed, self.word_dropout, self.hidden = cell, z_feed, float(word_dropout), hidden
        self.decoder_kind = decoder
        self.embedding = Embedding(vocab_size, embed, padding_idx=PAD)
        self.encoder = CELLS[cell](embed, hidden, batch_first=True)
        self.to_posterior = Linear(hidden, 2 * latent_dim)
        dec_in = embed + (latent_dim if z_feed in ("input", "both") else 0)
        self.decoder = CELLS[cell](dec_in, hidden, batch_first=True)
        self.z_to_state = Linear(latent_dim, hidden) if z_feed in ("init", "both") else None
        self.out = Linear(hidden, vocab_size)
        if decoder == "factorised":  # position-wise logits from z alone
            T = event_shape[0]
            self.factorised = nn.Sequential(
                Linear(latent_dim, hidden),
                nn.Tanh(),
                Linear(hidden, T * vocab_size),
                nn.Unflatten(-1, (T, vocab_size)),
            )

    def stack_from(self, layers: list[nn.Module]) -> None:
        if self.word_dropout > 0:
            raise NotPackable(
                "seq_vae with word_dropout > 0: its masks come from the global generator, so a packed "
                "member would not draw its solo trial's"
            )
        super().stack_from(layers)

    # ----------------------------------------------------------------- encoder

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T] -> (mu, logvar) [B, J] from the encoder's state after the last non-pad token
        (stacked: x [M, B, T] -> [M, B, J]).

        The RNN runs over the whole padded row and each row's output is read at its last non-pad
        position: the RNN is causal and pads come only after <eos>, so that output is the state the
        RNN reaches without reading a pad (what ``pack_padded_sequence`` gives, without sending the
        lengths to the host: no device sync; and it stacks with a leading member axis)."""
        last = (x != PAD).sum(-1).clamp(min=1) - 1  # [B]
        out, _ = self.encoder(self.embedding(x))  # [B, T, H]
        h = torch.gather(out, -2, last[..., None, None].expand(*last.shape, 1, out.shape[-1])).squeeze(-2)
        mu, logvar = self.to_posterior(h).chunk(2, dim=-1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    # ----------------------------------------------------------------- decoder

    def initial_state(self, z: torch.Tensor):
        """The decoder's state before <bos>: tanh(W z) with z_feed init/both, zeros otherwise."""
        if self.z_to_state is not None:
            h = torch.tanh(self.z_to_state(z))[None].contiguous()
        else:
            h = z.new_zeros(1, *z.shape[:-1], self.hidden)
        return (h, torch.zeros_like(h)) if self.cell == "lstm" else h

    def decoder_inputs(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The teacher-forced inputs [B, T]: <bos>, x_1, ..., x_{T-1}, with word dropout applied in
        training mode (each input after <bos> replaced by <unk> with probability word_dropout; pads
        stay pads)."""
        inp = torch.cat([torch.full_like(x[..., :1], BOS), x[..., :-1]], dim=-1)
        p = self.word_dropout if self.training else 0.0
        if p > 0:
            drop = torch.rand(inp.shape, generator=generator, device=inp.device) < p
            drop[..., 0] = False  # <bos> is never dropped
            inp = torch.where(drop & (inp != PAD), torch.full_like(inp, UNK), inp)
        return inp

    def step_logits(self, inp: torch.Tensor, z: torch.Tensor, state):
        """Decoder logits [B, L, V] for inputs [B, L] from ``state``; returns (logits, new state)."""
        e = self.embedding(inp)
        if self.z_feed in ("input", "both"):
            e = torch.cat([e, z.unsqueeze(-2).expand(*z.shape[:-1], e.shape[-2], z.shape[-1])], dim=-1)
        h, state = self.decoder(e, state)
        return self.out(h), state

    def token_log_probs(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x_t | x_<t, z) [B, T] teacher-forced (factorised: log p(x_t | z)), 0 at pad positions."""
        if self.decoder_kind == "factorised":
            logits = self.factorised(z)
        else:
            logits, _ = self.step_logits(self.decoder_inputs(x), z, self.initial_state(z))
        lp = torch.gather(F.log_softmax(logits, dim=-1), -1, x[..., None]).squeeze(-1)
        return lp.masked_fill(x == PAD, 0.0)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) [..., B] in nats (summed over non-pad tokens) for x [B, T], z [..., B, J];
        stacked: x [M, B, T], z [M, B, J] -> [M, B]."""
        if self.members is not None:
            return self.token_log_probs(x, z).sum(-1)
        lead = z.shape[:-2]
        B = x.shape[0]
        xs = x.expand(*lead, *x.shape).reshape(-1, x.shape[-1]) if lead else x
        return self.token_log_probs(xs, z.reshape(-1, z.shape[-1])).sum(-1).view(*lead, B)

    # ----------------------------------------------------------------- decoding

    @torch.no_grad()
    def generate(self, z: torch.Tensor, greedy: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """Token sequences [B, T] decoded from z [B, J] one step at a time: the most likely token
        (greedy) or a sample of each step's distribution; <eos> ends a row, pads follow it."""
        B, T = z.shape[0], self.event_shape[0]
        out = torch.full((B, T), PAD, dtype=torch.long, device=z.device)
        all_logits = self.factorised(z) if self.decoder_kind == "factorised" else None
        inp = torch.full((B, 1), BOS, dtype=torch.long, device=z.device)
        state, done = self.initial_state(z), torch.zeros(B, dtype=torch.bool, device=z.device)
        for t in range(T):
            if all_logits is not None:
                logits = all_logits[:, t].clone()
            else:
                logits, state = self.step_logits(inp, z, state)
                logits = logits[:, 0].clone()
            logits[:, [PAD, BOS]] = -float("inf")  # a sequence ends with <eos>, never a pad; <bos> only starts one
            if t == T - 1:  # the last position can only hold <eos>
                tok = torch.full((B,), EOS, dtype=torch.long, device=z.device)
            elif greedy:
                tok = logits.argmax(-1)
            else:
                tok = torch.multinomial(F.softmax(logits, -1), 1, generator=generator).squeeze(-1)
            out[:, t] = torch.where(done, torch.full_like(tok, PAD), tok)
            done |= tok == EOS
            inp = tok[:, None]
            if bool(done.all()):
                break
        return out

    def sample(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x ~ p(x|z): token sequences [B, T] (the protocol's sample hook)."""
        return self.generate(z, greedy=False, generator=generator)

    def greedy(self, z: torch.Tensor) -> torch.Tensor:
        """The greedy decoding of z: token sequences [B, T]."""
        return self.generate(z, greedy=True)


def detokenize(tokens: torch.Tensor, vocab: tuple[str, ...] | list[str]) -> list[str]:
    """Token rows [B, T] -> sentences: words up to the first <eos>, pads dropped."""
    out = []
    for row in tokens.tolist():
        words = []
        for t in row:
            if t in (EOS, PAD):
                break
            words.append(vocab[t] if 0 <= t < len(vocab) else SPECIALS[UNK])
        out.append(" ".join(words))
    return out


@torch.no_grad()
def text_artifact(
    model: SequenceVAE, x_val: torch.Tensor, vocab: tuple[str, ...] | list[str], n: int = 10, seed: int = 0
) -> str:
    """A text artifact: n validation sentences with their greedy reconstructions (from the posterior
    mean), then n greedy and n sampled decodings of prior draws z ~ N(0, I)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = x_val[:n].to(device)
    recon = model.greedy(model.encode(x)[0])
    g = torch.Generator(device).manual_seed(seed)
    z = torch.randn(n, model.latent_dim, generator=g, device=device)
    lines = ["# reconstructions (greedy decoding of the posterior mean)", ""]
    for a, b in zip(detokenize(x, vocab), detokenize(recon, vocab)):
        lines += [f"data:  {a}", f"recon: {b}", ""]
    lines += ["# prior samples, greedy", ""] + detokenize(model.greedy(z), vocab)
    lines += ["", "# prior samples, sampled", ""] + detokenize(model.sample(z, g), vocab)
    model.train(was_training)
    return "\n".join(lines) + "\n"
