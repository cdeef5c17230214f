"""One request's generation as a stream of events, run on the model worker thread.

Events, for each choice in turn (n > 1, or several prompts on /v1/completions): `Piece`s (text as
the model produces it, with its tokens' logprobs when asked for), then exactly one `Finish`
(finish_reason, token counts, timings). Choices of one prompt run one after the other: the
second finds the prompt's K/V in the cache and evaluates only its last token again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Union

from ..completion import TokenLogprob
from ..sampling import SamplingParams


@dataclass
class Piece:
    text: str
    logprobs: Optional[list[TokenLogprob]] = None   # one per token behind `text`, when asked for
    index: int = 0                                  # the choice it belongs to


@dataclass
class Finish:
    finish_reason: str              # "stop" | "length"
    prompt_tokens: int              # 0 for the second and later choices of one prompt (counted once)
    completion_tokens: int          # sampled tokens, a final EOS included (as the Model counts)
    timings: dict
    index: int = 0
    stop_string: Optional[str] = None   # the stop string that ended the choice, if one did


@dataclass
class ChoiceSpec:
    prompt_ids: list[int]           # the prompt as the model sees it (chat template applied)
    seed: Optional[int] = None
    echo: Optional[str] = None      # completions' echo: the prompt text, sent before the completion
    counts_prompt: bool = True      # the first choice of its prompt: usage counts the prompt once


@dataclass
class GenerationSpec:
    choices: list[ChoiceSpec]       # run one after another; the prompt cache serves repeats
    sampling: dict                  # Model.stream keyword arguments (seed per choice)
    top_logprobs: Optional[int]     # None: no logprobs; k: the sampled token's + k alternatives
    response_format: object = None  # a compiled forgert.grammar.Grammar, or None
    logit_bias: Optional[dict] = None   # {token id: bias}, checked against the vocabulary up front


def generation_job(model, spec: GenerationSpec, prompt_lookup: int = 0):
    """A ModelWorker job generating every choice of `spec` with `model`, with prompt lookup
    decoding of up to prompt_lookup draft tokens where it gives the same tokens (lookup_applies)."""
    lookup = prompt_lookup if prompt_lookup and lookup_applies(model, spec) else 0

    def job() -> Iterator[Union[Piece, Finish]]:
        for index, choice in enumerate(spec.choices):
            yield from _one_choice(model, spec, index, choice, lookup)

    return job


def lookup_applies(model, spec: GenerationSpec) -> bool:
    """Whether prompt lookup decoding gives spec's tokens exactly: greedy, penalties or not (a
    sampled draft keeps the distribution, not the draws: a seed would give other text), and the
    model says it can serve it (no logprobs, grammar or logit_bias; a cache that drops drafts)."""
    constrained = spec.top_logprobs is not None or spec.response_format is not None or bool(spec.logit_bias)
    try:
        params = SamplingParams.from_kwargs(None, **spec.sampling)
    except (TypeError, ValueError):   # Model.stream names the bad parameter to the client
        return False
    if not params.greedy:
        return False
    return model.prompt_lookup_refusal(params, constrained) is None


def _one_choice(model, spec: GenerationSpec, index: int, choice: ChoiceSpec, prompt_lookup: int = 0):
    if choice.echo is not None:
        lps = None
        if spec.top_logprobs is not None:
            lps = model.prompt_logprobs(choice.prompt_ids, spec.top_logprobs)
        yield Piece(choice.echo, lps, index)
    stream = model.stream(choice.prompt_ids, logprobs=spec.top_logprobs,
                          response_format=spec.response_format, logit_bias=spec.logit_bias,
                          **dict(spec.sampling, seed=choice.seed),
                          **({"prompt_lookup": prompt_lookup} if prompt_lookup else {}))
    try:
        for piece in stream:    # str, or StreamPiece(text, logprobs) when logprobs were asked for
            yield (Piece(piece, None, index) if isinstance(piece, str)
                   else Piece(piece.text, piece.logprobs, index))
    finally:
        stream.close()      # when the worker closes us early (the client left), the model stops
    completion = stream.completion
    yield Finish(finish_reason=completion.finish_reason,
                 prompt_tokens=completion.usage.prompt_tokens if choice.counts_prompt else 0,
                 completion_tokens=completion.usage.completion_tokens,
                 timings=timings_dict(completion.timings), index=index,
                 stop_string=completion.stop_string)


def timings_dict(timings) -> dict:
    """Prefill and decode speed as plain JSON numbers."""
    if timings is None:
        return {}
    return {
        "prompt_tokens_evaluated": timings.prompt_tokens_evaluated,
        "cached_tokens": timings.cached_tokens,
        "prefill_s": round(timings.prefill_s, 6),
        "prefill_tokens_per_s": round(timings.prefill_tokens_per_s, 3),
        "decode_tokens": timings.decode_tokens,
        "decode_s": round(timings.decode_s, 6),
        "draft_tokens": timings.draft_tokens,
        "accepted_draft_tokens": timings.accepted_draft_tokens,
        "decode_tokens_per_s": round(timings.decode_tokens_per_s, 3),
    }
