"""`forgert run "prompt"`: stream one answer to stdout, speeds to stderr."""
from __future__ import annotations

import sys

from .common import (UserError, add_draft_args, add_model_args, add_sampling_args, add_template_args, check_fits_context,
                     load_model, sampling_params, template_kwargs)
from .profiling import format_stages
from .progress import prefill_bar


def add_parser(subparsers):
    p = subparsers.add_parser("run", help="answer one prompt (chat template) or complete text (--raw)",
                              description="Stream the model's answer to PROMPT on stdout; prefill and "
                                          "decode speeds go to stderr. By default PROMPT is sent as a "
                                          "user message through the model's chat template and the "
                                          "answer is sampled (temperature 0.8), so it differs from run "
                                          "to run: --raw completes the text as is, --temperature 0 "
                                          "always picks the most likely token.")
    p.add_argument("prompt", nargs="?", help="the prompt ('-' or nothing reads stdin)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--chat", dest="chat", action="store_true", default=None,
                      help="send the prompt as a user message through the model's chat template "
                           "(default when the model has one)")
    mode.add_argument("--raw", dest="chat", action="store_false",
                      help="complete the prompt text as is, no template (default for models without one)")
    p.add_argument("--system", help="system message (chat mode; default: none)")
    add_template_args(p)
    p.add_argument("--profile", action="store_true",
                   help="print per-stage times (embedding, layers, logits) to stderr")
    add_model_args(p)
    add_draft_args(p)
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
        ids = model.prompt_tokens(messages + [{"role": "user", "content": prompt}], template_kwargs(args))
    else:
        ids = model.prompt_tokens(prompt)
    check_fits_context(model, len(ids))
    model.prefill_progress = prefill_bar()
    stream = model.stream(ids, params)
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
    if params.prompt_lookup or model.draft_model is not None:
        source = "prompt lookup" if params.prompt_lookup else "draft model"
        print(f"{source}: {t.accepted_draft_tokens} of {t.draft_tokens} draft tokens kept", file=sys.stderr)
    if args.profile:
        print("profile: " + format_stages(model.profile), file=sys.stderr)
    return 0
