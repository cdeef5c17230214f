"""One request's generation as a stream of events, run on the model worker thread.

Events: `Piece` (text as the model produces it, with its tokens' logprobs when asked for), then
exactly one `Finish` (finish_reason, token counts, timings).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Union

from ..completion import TokenLogprob


@dataclass
class Piece:
    text: str
    logprobs: Optional[list[TokenLogprob]] = None   # one per token behind `text`, when asked for


@dataclass
class Finish:
    finish_reason: str              # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int          # sampled tokens, a final EOS included (as the Model counts)
    timings: dict


@dataclass
class GenerationSpec:
    prompt_ids: list[int]           # the prompt as the model sees it (chat template applied)
    sampling: dict                  # Model.stream keyword arguments
    top_logprobs: Optional[int]     # None: no logprobs; k: the sampled token's + k alternatives


def generation_job(model, spec: GenerationSpec):
    """A ModelWorker job generating `spec` with `model`."""

    def job() -> Iterator[Union[Piece, Finish]]:
        stream = model.stream(spec.prompt_ids, logprobs=spec.top_logprobs, **spec.sampling)
        try:
            for piece in stream:    # str, or StreamPiece(text, logprobs) when logprobs were asked for
                yield Piece(piece) if isinstance(piece, str) else Piece(piece.text, piece.logprobs)
        finally:
            stream.close()      # when the worker closes us early (the client left), the model stops
        completion = stream.completion
        yield Finish(finish_reason=completion.finish_reason,
                     prompt_tokens=completion.usage.prompt_tokens,
                     completion_tokens=completion.usage.completion_tokens,
                     timings=timings_dict(completion.timings))

    return job


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
        "decode_tokens_per_s": round(timings.decode_tokens_per_s, 3),
    }
