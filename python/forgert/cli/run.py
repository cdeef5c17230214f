"""`forgert run "prompt"`: stream one answer to stdout, speeds to stderr."""
from __future__ import annotations

import sys

from .common import UserError, add_model_args, add_sampling_args, load_model, sampling_params
from .profiling import format_stages


def add_parser(subparsers):
    p = subparsers.add_parser("run", help="generate a completion for one prompt",
                              description="Stream the model's answer to PROMPT on stdout; prefill and "
                                          "decode speeds go to stderr.")
    p.add_argument("prompt", nargs="?", help="the prompt ('-' or nothing reads stdin)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--chat", dest="chat", action="store_true", default=None,
                      help="wrap the prompt in the model's chat template (default when it has one)")
    mode.add_argument("--raw", dest="chat", action="store_false", help="complete the prompt text as is")
    p.add_argument("--system", help="system message (chat mode)")
    p.add_argument("--profile", action="store_true",
                   help="print per-stage times (embedding, layers, logits) to stderr")
    add_model_args(p)
    add_sampling_args(p)
    return p


def _read_prompt(args) -> str:
    if args.prompt is None or args.prompt == "-":
        if sys.stdin.isatty():
            raise UserError("no prompt: pass it as an argument or pipe it on stdin")
        return sys.stdin.read().rstrip("\n")    # the newline `echo` adds is not part of the prompt
    return args.prompt


def run(args) -> int:
    prompt = _read_prompt(args)
    params = sampling_params(args)   # validate flags before the slow model load
    model = load_model(args)
    chat = args.chat if args.chat is not None else bool(model.chat_template)
    if args.profile:
        model.set_profiling(True)
    if args.system and not chat:
        raise UserError("--system needs chat mode (the model has no chat template, or --raw was given)")
    if chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        stream = model.chat_stream(messages + [{"role": "user", "content": prompt}], params)
    else:
        stream = model.stream(prompt, params)
    out = sys.stdout
    for piece in stream:
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    c = stream.completion
    t = c.timings
    print(f"prefill: {t.prompt_tokens_evaluated} tokens, {t.prefill_tokens_per_s:.1f} tok/s | "
          f"decode: {t.decode_tokens} tokens, {t.decode_tokens_per_s:.1f} tok/s | "
          f"finish: {c.finish_reason}", file=sys.stderr)
    if args.profile:
        print("profile: " + format_stages(model.profile), file=sys.stderr)
    return 0
