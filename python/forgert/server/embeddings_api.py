"""POST /v1/embeddings (OpenAI's shape) over Model.embed: the inputs' token ids checked before the
request queues, the vectors computed on the model's worker thread, the answer as OpenAI gives it.

Each input is tokenized once here (a text as Model.embed reads it: tokenizer.encode_with_end, the
model's BOS rule and the end token an embedding model's tokenizer appends) and Model.embed gets
those ids, so `usage` counts exactly the tokens evaluated. Token-id inputs are taken as they are.
`encoding_format: "base64"` is each vector's little-endian float32 bytes in base64, what OpenAI's
client decodes (and asks for when the caller names no format).
"""
from __future__ import annotations

import asyncio
import base64
import json
from typing import AsyncIterator

import numpy as np

from ..embeddings import check_dimensions
from .errors import APIError
from .schemas import EmbeddingRequest


def _where(req: EmbeddingRequest, i: int) -> str:
    return f"input[{i}]" if req.batched else "input"


def _bad_input(message: str) -> APIError:
    return APIError(400, f"Invalid value for 'input': {message}", param="input", code="invalid_value")


def checked_dimensions(req: EmbeddingRequest, width: int):
    """The request's dimensions (None: the whole vector), or a 400 naming `dimensions`."""
    try:
        return None if req.dimensions is None else check_dimensions(req.dimensions, width)
    except ValueError as exc:
        raise APIError(400, f"Invalid value for 'dimensions': {exc}", param="dimensions",
                       code="invalid_value") from None


async def input_ids(model, req: EmbeddingRequest) -> list[list[int]]:
    """The token ids of each input (texts tokenized off the event loop), or a 400 naming `input`
    for an empty one, a token id outside the vocabulary, or one longer than the context."""
    items = req.inputs()
    for i, item in enumerate(items):
        if not item:
            what = f"{_where(req, i)} is empty" if req.batched else f"an empty {'string' if item == '' else 'list'}"
            raise _bad_input(f"{what}: there is nothing to embed")
    texts = [(i, item) for i, item in enumerate(items) if isinstance(item, str)]
    if texts:
        encoded = await asyncio.to_thread(lambda: [model.tokenizer.encode_with_end(t) for _, t in texts])
        items = list(items)
        for (i, _), ids in zip(texts, encoded):
            items[i] = ids
    vocab = model.vocab_size
    for i, ids in enumerate(items):
        if not ids:     # a text that tokenizes to nothing (no BOS, no end token)
            raise _bad_input(f"{_where(req, i)} has no tokens: there is nothing to embed")
        bad = next((j for j, t in enumerate(ids) if not 0 <= t < vocab), None)
        if bad is not None:
            raise _bad_input(f"{_where(req, i)}[{bad}] = {ids[bad]} is not a token id of this model "
                             f"(0..{vocab - 1})")
        if len(ids) > model.n_ctx:
            what = "your input" if not req.batched else _where(req, i)
            raise APIError(400, f"This model's maximum context length is {model.n_ctx} tokens. However, "
                                f"{what} resulted in {len(ids)} tokens. Please reduce the length of the input.",
                           param="input", code="context_length_exceeded")
    return items


def embedding_job(model, id_lists: list[list[int]], dimensions):
    """The worker's job: one vector per input, yielded as each is done (a client that leaves
    stops it before the next input)."""
    def job():
        for ids in id_lists:
            yield model.embed(ids, dimensions=dimensions)
    return job


async def collect_vectors(events: AsyncIterator) -> list[np.ndarray]:
    try:
        return [vector async for vector in events]
    except ValueError as exc:   # the model's files name a pooling forgert cannot apply
        raise APIError(400, f"This model cannot give embeddings: {exc}", code="model_not_supported") from None


def response_body(vectors: list[np.ndarray], encoding_format, model_id: str, n_tokens: int) -> bytes:
    """OpenAI's embeddings response as JSON bytes (large: the caller encodes off the event loop)."""
    if encoding_format == "base64":
        encode = lambda v: base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")   # noqa: E731
    else:
        encode = lambda v: np.asarray(v, dtype=np.float32).tolist()   # noqa: E731 - each float32 exactly
    data = [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)]
    body = {"object": "list", "data": data, "model": model_id,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}
    return json.dumps(body, separators=(",", ":")).encode()
