"""Prompt lookup decoding: draft tokens copied from earlier in the context, verified in one pass.

Output that repeats its input (a code edit that rewrites a file, an answer quoting a document,
a list extended in its own pattern) can be predicted by looking up the last few tokens where they
occurred before and proposing the tokens that followed them there. The model then evaluates the
next token and the draft together, every row as a decode row (Engine.forward_rows_argmax), and
keeps the draft's tokens while they equal its own greedy choice, plus the choice after the last
one kept: greedy decoding's tokens exactly, several per pass where the draft is right. A pass of
k + 1 rows reads the weights once, as a single decode step does, so a kept draft token costs a
fraction of a step (transformers' prompt_lookup_num_tokens, vLLM's n-gram speculation).

With sampling (temperature > 0, penalties), a draft is verified by speculative sampling with a
draft that proposes one token for sure (Leviathan et al. 2023; Chen et al. 2023): draft token d
is kept with probability p(d) under the sampler's own filtered distribution p of its row, and at
the first one rejected the token is drawn from p with d removed (renormalized). Each token then has
the distribution plain sampling gives it, so the text is sampled as it would be without the
lookup, though a seed draws other text than it does without it (reproducibly).
"""
from __future__ import annotations

import numpy as np

from .sampling import native_sampler

# Matches of the last 4 tokens are tried first, then 3, then 2: the longest context predicts best,
# and a single token repeats too often to be worth a draft.
MAX_NGRAM = 4
MIN_NGRAM = 2
# Rows of one verification pass (Engine.forward_rows_argmax's limit): the token and its draft.
MAX_ROWS = 16


class DraftLength:
    """A draft source's length schedule, up to k tokens: it grows by 2 while drafts are confirmed
    whole and shrinks by 1 at each miss (transformers' "heuristic" schedule), so that text the
    source predicts badly costs passes of few rows (every row costs compute, most on the CPU).
    NgramDraft and draft_model.ModelDraft share it."""

    def __init__(self, k: int):
        self.k = k
        self.length = min(k, 4)   # the draft's length now

    def confirmed(self, drafted: int, kept: int) -> None:
        """A draft of `drafted` tokens had its first `kept` confirmed."""
        self.length = min(self.k, self.length + 2) if kept == drafted else max(1, self.length - 1)


class NgramDraft(DraftLength):
    """The tokens so far, indexed by the n-grams they contain: for each n-gram, where the token
    after its latest occurrence stands."""

    def __init__(self, tokens, draft_tokens: int):
        if isinstance(draft_tokens, bool) or not isinstance(draft_tokens, int) or not 1 <= draft_tokens < MAX_ROWS:
            raise ValueError(f"prompt_lookup must be an integer in 1..{MAX_ROWS - 1} draft tokens, got {draft_tokens!r}")
        super().__init__(draft_tokens)
        self.tokens: list[int] = []
        self._follows: list[dict] = [dict() for _ in range(MAX_NGRAM + 1)]   # [n]: n-gram -> index of its follower
        for t in tokens:
            self.push(int(t))

    def push(self, tok: int) -> None:
        i = len(self.tokens)
        for n in range(MIN_NGRAM, MAX_NGRAM + 1):
            if i >= n:
                self._follows[n][tuple(self.tokens[i - n:i])] = i
        self.tokens.append(tok)

    def propose(self, at_most: int) -> list[int]:
        """Up to min(length, at_most) tokens that followed the longest earlier occurrence of the
        last tokens (the latest such occurrence); [] when none occurred before."""
        k = min(self.length, at_most)
        if k <= 0:
            return []
        for n in range(MAX_NGRAM, MIN_NGRAM - 1, -1):
            if len(self.tokens) < n:
                continue
            j = self._follows[n].get(tuple(self.tokens[-n:]))
            if j is not None:
                return self.tokens[j:j + k]
        return []


def refusal(params, constrained: bool, recurrent: bool):
    """Why prompt lookup decoding cannot serve a generation with SamplingParams params, or None
    when it can. constrained: the generation asks for logprobs, a response_format or a logit_bias;
    recurrent: the model has recurrent layers. Rejected drafts are dropped from the cache."""
    if constrained:
        return ("prompt_lookup verifies drafts against the sampler's own choices: it cannot be "
                "combined with logprobs, response_format or logit_bias")
    if recurrent:
        return ("prompt_lookup needs a model whose cache can drop rejected draft tokens; this "
                "model's recurrent layers keep a state that cannot rewind")
    return None


def accepted(draft, best) -> int:
    """How many leading draft tokens the model's choices confirm: best[i] is its greedy token after
    the row holding draft[i - 1] (row 0: the token before the draft)."""
    m = 0
    while m < len(draft) and draft[m] == int(best[m]):
        m += 1
    return m


def _draw(ids, probs, rng) -> int:
    """One token of the distribution probs over ids (float64, summing to > 0)."""
    cdf = np.cumsum(probs)
    j = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return int(ids[min(j, len(ids) - 1)])


def verify_sampled(draft, logits, history, sampler) -> list[int]:
    """Speculative sampling of a decode run's logits f32 [k + 1, vocab] (the rows of the token
    before the draft and of its k tokens) with `sampler` (sampling.Sampler): its filters, as the
    C++ sampler computes them (a flat row's top_p in NumPy sorts the vocabulary: 16-27 ms at
    128256), its penalties over history (the prompt and the tokens before the draft) and the draft
    tokens before each row, and its seeded generator. Returns the tokens kept, then one drawn."""
    params = sampler.params

    def row_distribution(i):
        return native_sampler(params, list(history) + list(draft[:i])).filter(logits[i])
    return sampled_tokens(draft, row_distribution, sampler.rng)


def sampled_tokens(draft, row_distribution, rng) -> list[int]:
    """Speculative sampling of a pass over the token before the draft and the draft's k tokens.

    row_distribution(i) -> (ids, probs): the sampler's filtered distribution of the token after
    row i (row 0: the token before the draft; row i: draft[i - 1]), given the draft's first i
    tokens; rng: a numpy Generator. Returns 1..k+1 tokens: the draft tokens kept, then one drawn
    (from the rest of the first rejected row's distribution, or the last row's when all were kept).
    """
    out = []
    for i, d in enumerate(draft):
        ids, probs = row_distribution(i)
        p = probs / probs.sum()
        hit = ids == d
        if rng.random() < p[hit].sum():
            out.append(int(d))
            continue
        rest = np.where(hit, 0.0, p)       # p without d: its mass goes to the others in proportion
        if rest.sum() <= 0.0:              # p(d) was 1 up to rounding: d was the only choice
            out.append(int(d))
            continue
        out.append(_draw(ids, rest, rng))
        return out
    ids, probs = row_distribution(len(draft))
    out.append(_draw(ids, probs, rng))
    return out
