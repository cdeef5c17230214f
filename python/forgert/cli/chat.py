"""`forgert chat`: interactive multi-turn chat in the terminal with the model's template."""
from __future__ import annotations

import sys

from .common import (UserError, add_draft_args, add_model_args, add_sampling_args, add_template_args, check_fits_context,
                     load_model, sampling_params, template_kwargs)
from .profiling import format_stages, profiling_engine
from .progress import prefill_bar

PROMPT = ">>> "
HELP = "/reset starts a new conversation, /exit (or Ctrl-D) quits, Ctrl-C stops an answer."


def add_parser(subparsers):
    p = subparsers.add_parser("chat", help="chat with the model in the terminal",
                              description="Interactive chat using the model's chat template; answers "
                                          "stream as they are generated. " + HELP)
    p.add_argument("--system", help="system message for the conversation (default: none)")
    add_template_args(p)
    p.add_argument("--stats", action="store_true", help="print prefill/decode speed after each answer")
    p.add_argument("--profile", action="store_true",
                   help="print the engine's per-stage times (embedding, layers, logits) of the "
                        "last token of each answer")
    add_model_args(p)
    add_draft_args(p)
    add_sampling_args(p, max_tokens=512)
    return p


class ChatSession:
    """The conversation so far; each turn's prompt extends the last, so the model's prompt cache
    only evaluates the new messages."""

    def __init__(self, model, params, system: str | None, chat_template_kwargs: dict | None = None):
        self.model, self.params, self.template_kwargs = model, params, chat_template_kwargs
        self.system = [{"role": "system", "content": system}] if system else []
        self.messages = list(self.system)

    def reset(self) -> None:
        self.messages = list(self.system)
        self.model.reset()

    def answer(self, user_text: str, out) -> object:
        """Stream the reply to `out`; returns the Completion, or None when interrupted."""
        turn = self.messages + [{"role": "user", "content": user_text}]
        ids = self.model.prompt_tokens(turn, self.template_kwargs)
        check_fits_context(self.model, len(ids))    # UserError once the conversation outgrows it
        stream = self.model.stream(ids, self.params)
        try:
            for piece in stream:
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:
            stream.close()
            out.write("\n[interrupted: this exchange is not kept]\n")
            return None
        out.write("\n")
        completion = stream.completion
        self.messages = turn + [{"role": "assistant", "content": completion.text}]
        return completion


def _read_line(interactive: bool):
    """The next user line; None at end of input."""
    try:
        return input(PROMPT if interactive else "")
    except EOFError:
        return None


def run(args) -> int:
    params = sampling_params(args)    # validate flags before the slow model load
    model = load_model(args)
    if not model.chat_template:
        raise UserError(f"{model.info()['name']} has no chat template; use `forgert run --raw` instead")
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401 - line editing and history for input()
        except ImportError:
            pass
        print(f"Chatting with {model.info()['name']} ({model.backend}). {HELP}", file=sys.stderr)
    engine = profiling_engine(model) if args.profile else None
    if args.profile and engine is None:
        print("forgert: this engine has no per-stage timers; --profile shows nothing", file=sys.stderr)
    model.prefill_progress = prefill_bar()
    session = ChatSession(model, params, args.system, template_kwargs(args))
    out = sys.stdout
    while True:
        try:
            line = _read_line(interactive)
        except KeyboardInterrupt:    # Ctrl-C at the prompt quits, like Ctrl-D
            print(file=sys.stderr)
            return 0
        if line is None:
            if interactive:
                print(file=sys.stderr)
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit", "/bye"):
            return 0
        if text == "/reset":
            session.reset()
            print("[conversation cleared]", file=sys.stderr)
            continue
        if text in ("/help", "/?"):
            print(HELP, file=sys.stderr)
            continue
        if text.startswith("/"):
            print(f"unknown command {text.split()[0]}; {HELP}", file=sys.stderr)
            continue
        try:
            completion = session.answer(line, out)
        except UserError as e:    # the conversation no longer fits the context
            print(f"forgert: {e}\n(/reset starts a new conversation)", file=sys.stderr)
            continue
        if completion is None:
            continue
        if completion.finish_reason == "length":
            print("[answer cut: --max-tokens or the context length reached]", file=sys.stderr)
        if args.stats:
            t = completion.timings
            print(f"[prefill {t.prompt_tokens_evaluated} tokens at {t.prefill_tokens_per_s:.1f} tok/s, "
                  f"{t.cached_tokens} cached | decode {t.decode_tokens} tokens at "
                  f"{t.decode_tokens_per_s:.1f} tok/s]", file=sys.stderr)
        if engine is not None:
            print(f"[last forward pass: {format_stages(engine.last_profile())}]", file=sys.stderr)
