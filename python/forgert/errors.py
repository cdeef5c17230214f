"""Exceptions forgert raises for problems the user can fix."""


class ModelFormatError(ValueError):
    """A model file or directory is malformed, truncated or uses something forgert does not support.

    The message always starts with the file name, then says what is wrong, e.g.
    "model.gguf: truncated: tensor 'blk.3.ffn_up.weight' needs bytes 1000..2000 but the file has 1500".
    """


class KvCacheTooLargeError(ValueError):
    """The KV cache for the asked context would not fit in the memory available; `n_ctx_that_fits`
    is the largest context that would (the CLI names its --n-ctx flag with it)."""

    def __init__(self, message: str, n_ctx: int, n_ctx_that_fits: int):
        super().__init__(message)
        self.n_ctx = n_ctx
        self.n_ctx_that_fits = n_ctx_that_fits


class ChatTemplateError(ValueError):
    """The model has no chat template, or its template failed on these messages (or passed a
    limit on rendering: chat_limits.py)."""


class NonFiniteLogitsError(ValueError):
    """The model's logits at a position hold NaN or +inf, or are all -inf, so greedy decoding has
    no token to pick: its activations overflowed, or a weight holds NaN / inf (a broken file).

    `position` is the token position whose evaluation gave those logits; `kind` is "NaN", "+inf"
    or "all -inf". (The samplers refuse the same logits with a ValueError of their own.)
    """

    def __init__(self, message: str, position: int, kind: str):
        super().__init__(message)
        self.position = position
        self.kind = kind
