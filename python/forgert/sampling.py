"""Sampling parameters and a NumPy sampler over one row of float32 logits.

Order (as HF transformers and vLLM): penalties -> temperature -> top-k -> top-p -> min-p ->
draw. Temperature 0 means greedy (argmax after penalties). Penalties look at every token so far,
prompt and generated:
  repetition (HF/llama.cpp): a seen token's logit l becomes l / r if l > 0 else l * r
  presence (OpenAI): l -= presence if the token was seen
  frequency (OpenAI): l -= frequency * count
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class SamplingParams:
    max_tokens: int | None = 256      # None: until EOS / a stop string / the context is full
    temperature: float = 0.8
    top_k: int = 40               # 0 disables
    top_p: float = 0.95           # 1.0 disables
    min_p: float = 0.05           # 0.0 disables
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list = field(default_factory=list)
    ignore_eos: bool = False
    # Prompt lookup decoding (prompt_lookup.py): up to this many draft tokens copied from earlier
    # in the context, verified in one pass; greedy's tokens exactly, or with sampling each token
    # drawn from the distribution plain sampling draws it from. 0: off.
    prompt_lookup: int = 0

    def __post_init__(self):
        self.validate()

    def validate(self):
        def bad(name, need):
            raise ValueError(f"{name} must be {need}, got {getattr(self, name)!r}")

        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 0):
            bad("max_tokens", "an integer >= 0 or None")
        if not _is_num(self.temperature) or self.temperature < 0:
            bad("temperature", "a finite number >= 0")
        if not _is_int(self.top_k) or self.top_k < 0:
            bad("top_k", "an integer >= 0 (0 disables it)")
        if not _is_num(self.top_p) or not 0 < self.top_p <= 1:
            bad("top_p", "a number in (0, 1]")
        if not _is_num(self.min_p) or not 0 <= self.min_p <= 1:
            bad("min_p", "a number in [0, 1]")
        if not _is_num(self.repetition_penalty) or self.repetition_penalty <= 0:
            bad("repetition_penalty", "a number > 0 (1.0 disables it)")
        for name in ("presence_penalty", "frequency_penalty"):
            if not _is_num(getattr(self, name)) or not -2 <= getattr(self, name) <= 2:
                bad(name, "a number in [-2, 2]")
        if self.seed is not None and not _is_int(self.seed):
            bad("seed", "an integer or None")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.stop is None:
            self.stop = []
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
            bad("stop", "a string or a list of non-empty strings")
        self.stop = list(self.stop)
        if not isinstance(self.ignore_eos, bool):
            bad("ignore_eos", "True or False")
        if not _is_int(self.prompt_lookup) or not 0 <= self.prompt_lookup <= 15:
            bad("prompt_lookup", "an integer in 0..15 (draft tokens; 0 turns it off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def has_penalties(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)

    @classmethod
    def from_kwargs(cls, params=None, **kwargs) -> "SamplingParams":
        """Merge keyword overrides into `params` (or the defaults); unknown names are a TypeError."""
        if params is not None and not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams (or pass its fields as keywords), "
                            f"got {type(params).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown sampling parameter(s): {', '.join(unknown)}")
        base = {f.name: getattr(params, f.name) for f in fields(cls)} if params else {}
        base.update({k: v for k, v in kwargs.items()})
        return cls(**base)


def apply_penalties(logits: np.ndarray, history, params: SamplingParams) -> np.ndarray:
    """logits: float32 [vocab] (copied, not modified); history: token ids so far."""
    if not params.has_penalties or len(history) == 0:
        return logits
    logits = np.array(logits, dtype=np.float32, copy=True)
    ids, counts = np.unique(np.asarray(history, dtype=np.int64), return_counts=True)
    seen = logits[ids]
    r = params.repetition_penalty
    if r != 1.0:
        seen = np.where(seen > 0, seen / r, seen * r)
    seen = seen - params.presence_penalty - params.frequency_penalty * counts
    logits[ids] = seen
    return logits


def check_logits(logits: np.ndarray):
    """A NaN or +inf logit (the model's arithmetic overflowed) has no place in the order the
    filters sort by, and a row of -inf leaves nothing to draw: refused as the C++ sampler does."""
    bad = ~(logits <= np.finfo(np.float32).max)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"logits[{i}] is {'NaN' if np.isnan(logits[i]) else 'inf'}: the model's arithmetic "
                         "overflowed, there is no distribution to sample")
    if not (logits > -np.inf).any():
        raise ValueError("every logit is -inf: no token can be sampled")


def candidates(logits: np.ndarray, params: SamplingParams):
    """(ids, tempered logits less the best one's) of the tokens top-k / top-p / min-p keep.

    All three keep a prefix of the tokens sorted by probability, so the result is the shortest
    of the three prefixes. Top-p mass is measured on the top-k survivors (renormalized, as HF
    does); min-p compares with the most likely token, which every filter keeps. Only the few
    survivors of the O(vocab) top-k / min-p cuts get sorted.
    """
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    check_logits(x)
    with np.errstate(over="ignore"):        # the best at 0: a tiny temperature takes the rest to -inf,
        x = (x - x.max()) / params.temperature  # never to inf - inf
    ids = np.arange(len(x))
    if 0 < params.top_k < len(x):
        ids = np.argpartition(-x, params.top_k - 1)[:params.top_k]
    xs = x[ids]
    e = np.exp(xs - xs.max())             # p * Z / p_max: the most likely token has e == 1
    if params.min_p > 0.0:
        keep = e >= params.min_p
        ids, xs, mass, e = ids[keep], xs[keep], e.sum(), e[keep]
    else:
        mass = e.sum()
    if params.top_p < 1.0:
        order = _top_mass(xs, e, params.top_p * mass)
        # keep a token while the mass before it is below top_p
        before = (np.cumsum(e[order]) - e[order]) / mass
        order = order[:max(1, int(np.count_nonzero(before < params.top_p)))]
        ids, xs = ids[order], xs[order]
    return ids, xs


def _top_mass(xs, e, target, first=256):
    """Indices of the most likely tokens, best first, holding at least `target` of the mass e;
    partitions a growing top-m instead of sorting the whole vocabulary."""
    n, m = len(xs), min(len(xs), first)
    while True:
        part = np.argpartition(-xs, m - 1)[:m] if m < n else np.arange(n)
        if m == n or e[part].sum() >= target:
            return part[np.argsort(-xs[part], kind="stable")]
        m = min(n, m * 4)


def filter_logits(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Tempered logits (less the best one's) with every token outside top-k / top-p / min-p at -inf.
    float64 [vocab]."""
    ids, xs = candidates(logits, params)
    out = np.full(np.asarray(logits).size, -np.inf)
    out[ids] = xs
    return out


def _seed64(seed):
    return None if seed is None else seed % 2**64   # any integer is a valid seed


def native_sampler(params: SamplingParams, history=()):
    """The C++ sampler (forgert._core.Sampler) for params, its penalty history set to history.

    Same filters and order as Sampler below; its seeded RNG (mt19937_64) is not NumPy's, so a
    seed gives other text than the NumPy sampler (and forgert before 0.x.y) did, reproducibly."""
    from . import _core

    # any top_k >= the vocabulary keeps every token (as 0 does); the C++ int holds up to 2**31 - 1
    s = _core.Sampler(params.temperature, min(params.top_k, 2**31 - 1), params.top_p, params.min_p,
                      params.repetition_penalty, params.presence_penalty, params.frequency_penalty,
                      _seed64(params.seed))
    s.reset_history(np.asarray(history, dtype=np.int32))
    return s


class Sampler:
    """The NumPy sampler: the reference the C++ one (native_sampler) is tested against, and the
    seeded generator of speculative sampling (prompt_lookup.verify_sampled). Generation draws with
    the C++ one, from the engine's row or (logprobs, grammars, logit_bias) from the row Python masked."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(_seed64(params.seed))

    def sample(self, logits: np.ndarray, history=()) -> int:
        """logits: float32 [vocab] for the next position; history: prompt + generated ids."""
        logits = np.asarray(logits).reshape(-1)
        logits = apply_penalties(logits, history, self.params)
        if self.params.greedy:
            check_logits(logits)
            return int(np.argmax(logits))
        ids, xs = candidates(logits, self.params)   # (it checks the logits)
        cdf = np.cumsum(np.exp(xs - xs.max()))
        j = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
        return int(ids[min(j, len(ids) - 1)])
