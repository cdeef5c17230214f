"""Speculative decoding with a draft model: a small model of the same vocabulary proposes the next
tokens greedily, and the model being served verifies them all in one pass (Leviathan et al. 2023;
llama.cpp's --model-draft, mlx-lm's --draft-model, vLLM's draft models).

The draft is a second forgert.Model (Llama-3.2-1B for Llama-3.1-8B, Qwen3-0.6B for Qwen3-8B).
ModelDraft is a draft source with NgramDraft's interface (prompt_lookup.py), so the decode loop
verifies its proposals as it verifies prompt lookup's: greedy generation keeps the draft's tokens
while they equal the target's own argmax (greedy decoding's tokens exactly), sampling verifies
them by speculative sampling (the target's sampling distribution exactly; the draft's greedy
choice is a draft that proposes one token for sure). The draft's K/V rows past a rejected token
are simply overwritten: the draft model's cache is addressed by position, as the target's is.

A pass of k + 1 rows costs the target about one decode step where decode is bound by reading the
weights (the GPU; the CPU at one sequence up to a few rows), so each kept draft token saves most of
a step, while each drafted token costs a step of the draft model. The draft's length follows
NgramDraft's schedule: it grows while drafts are confirmed whole and shrinks at each miss.
"""
from __future__ import annotations

from .errors import ModelFormatError, NonFiniteLogitsError
from .prompt_cache import common_prefix
from .prompt_lookup import MAX_ROWS, DraftLength

# The draft tokens proposed at most by default: on the CPU each row of a verification pass costs
# the target a token's dot products, so 3-4 tokens gave the best predicted speed-up at 80-90%
# agreement (an 8B target, a 1B draft: bench/results/draft_model_gpuhost.md); the length schedule
# shrinks it at each miss. (llama.cpp's --draft-max is 16, mlx-lm's default 2.)
DEFAULT_DRAFT_TOKENS = 4
# Catch-up rows evaluated as one decode run (the tokens the target confirmed since the last
# draft); longer gaps (the prompt) go through the draft model's prefill.
_CATCH_UP_ROWS = MAX_ROWS


def check_draft_tokens(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < MAX_ROWS:
        raise ValueError(f"draft_tokens must be an integer in 1..{MAX_ROWS - 1}, got {n!r}")
    return n


def check_compatible(target, draft) -> None:
    """ModelFormatError naming the difference unless the draft model can propose tokens for the
    target: the same tokenizer vocabulary (every token's text and id), a cache that can drop
    rejected tokens, and a context at least the target's."""
    name, dname = target._model.name, draft._model.name
    if draft._engine.recurrent:
        raise ModelFormatError(f"draft model {dname} has recurrent layers, whose state cannot drop the "
                               f"draft tokens the target rejects: use an attention-only draft model")
    if draft.n_ctx < target.n_ctx:
        raise ValueError(f"the draft model's context ({draft.n_ctx} tokens) is shorter than the target's "
                         f"({target.n_ctx}): load it with n_ctx={target.n_ctx}")
    t, d = target.tokenizer, draft.tokenizer
    if t.n_vocab != d.n_vocab:
        raise ModelFormatError(f"draft model {dname} has a vocabulary of {d.n_vocab} tokens, {name} has "
                               f"{t.n_vocab}: a draft model must share the target's tokenizer")
    tv, dv = t.hf.get_vocab(with_added_tokens=True), d.hf.get_vocab(with_added_tokens=True)
    if tv != dv:
        diff = sorted((i, tok) for tok, i in dv.items() if tv.get(tok) != i)[:1]
        where = f" (token {diff[0][0]} is {diff[0][1]!r} in the draft model)" if diff else ""
        raise ModelFormatError(f"draft model {dname}'s tokenizer differs from {name}'s{where}: a draft "
                               f"model must share the target's tokenizer")
    if (t.bos_id, t.add_bos) != (d.bos_id, d.add_bos):
        raise ModelFormatError(f"draft model {dname} starts a text with BOS {d.bos_id if d.add_bos else 'none'}, "
                               f"{name} with {t.bos_id if t.add_bos else 'none'}")


class ModelDraft(DraftLength):
    """A generation's draft source from a draft Model (NgramDraft's interface and length
    schedule): tokens so far pushed as the target confirms them; propose() brings the draft
    model's cache up to them and decodes up to `length` tokens greedily."""

    def __init__(self, draft, tokens, draft_tokens: int):
        super().__init__(check_draft_tokens(draft_tokens))
        self.draft = draft
        self.tokens: list[int] = [int(t) for t in tokens]

    def push(self, tok: int) -> None:
        self.tokens.append(int(tok))

    def propose(self, at_most: int) -> list[int]:
        """Up to min(length, at_most) tokens the draft model chooses greedily after the tokens so
        far; [] where its context has no room for them."""
        d = self.draft
        k = min(self.length, at_most, d.n_ctx - len(self.tokens) + 1)
        if k <= 0 or not self.tokens:
            return []
        with d._lock("drafting"):
            try:
                tok = self._catch_up()
                out = [tok]
                while len(out) < k:
                    pos = len(d._cache_tokens)
                    tok = d._eval([tok], pos, "argmax")
                    d._cache_tokens.append(out[-1])
                    out.append(tok)
            except NonFiniteLogitsError as e:   # say which of the two models it was
                raise NonFiniteLogitsError(f"draft model {d._model.name}: {e}", e.position, e.kind) from None
        return out

    def _catch_up(self) -> int:
        """Evaluates the tokens the draft model's cache lacks (those past the longest prefix it
        holds; at least the last); returns its argmax after the last."""
        d, ids = self.draft, self.tokens
        held = d._cache_tokens
        start = min(common_prefix(held, ids), len(ids) - 1)
        if len(ids) - start > _CATCH_UP_ROWS:
            tok, _ = d._prefill(ids, "argmax")   # the prompt: in prefill chunks, reusing its prefix
            return int(tok)
        d._cache_tokens = held[:start]
        tok = d._eval(ids[start:], start, "argmax")
        d._cache_tokens = list(ids)
        return int(tok)
