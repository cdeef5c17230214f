"""`forgert bench`: prefill and decode speed of a model, as users see it through the Python API."""
from __future__ import annotations

import json
import statistics

from .. import greedy
from .common import UserError, add_model_args, load_model
from .profiling import STAGES, cpu_per_token, format_cpu_table, profiling_engine
from .progress import ProgressBar

# Plain prose: any tokenizer turns it into ordinary tokens, none of them special.
_FILLER = ("The quick brown fox jumps over the lazy dog while the river runs past old stone walls, "
           "and a quiet town wakes up to bread, coffee and the news of the day. ")


def add_parser(subparsers):
    p = subparsers.add_parser("bench", help="measure prefill and decode tokens/s",
                              description="Time a cold prefill of --prompt-tokens tokens and the "
                                          "greedy decode of --gen-tokens tokens, --repeats times; "
                                          "report medians.")
    add_model_args(p)
    p.add_argument("--prompt-tokens", "-p", type=int, default=128, help="prompt length (default 128)")
    p.add_argument("--gen-tokens", "-g", type=int, default=64, help="tokens to decode (default 64)")
    p.add_argument("--repeats", "-r", type=int, default=3, help="runs to take the median of (default 3)")
    p.add_argument("--decode-depth", "-d", type=int, default=None,
                   help="tokens in the cache when the timed decode starts (default: the prompt's, decoding "
                        "right after it; 0 decodes after a lone first token, as llama-bench's tg does)")
    p.add_argument("--profile", action="store_true",
                   help="also time the engine's stages (embedding, layers, logits) per forward pass and, "
                        "on the CPU, each op kind per decoded token with the parallel regions and thread "
                        "busyness (the split is FORGERT_CPU_SPLIT's)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    return p


def prompt_of_length(model, n: int) -> list[int]:
    """n ordinary token ids (a BOS first when the model adds one)."""
    ids = model.tokenize("")
    piece = model.tokenize(_FILLER, add_bos=False)
    while len(ids) < n:
        ids += piece
    return ids[:n]


def _check_args(args) -> None:
    for name in ("prompt_tokens", "gen_tokens", "repeats"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.decode_depth is not None and args.decode_depth < 0:
        raise UserError(f"--decode-depth must be at least 0, got {args.decode_depth}")


def measure(model, prompt: list[int], gen_tokens: int, label: str, decode_prompt: list[int] | None = None) -> dict:
    """One cold run: prefill `prompt` from an empty cache, then decode `gen_tokens` greedily.
    With `decode_prompt` the decode is timed in a second cold run after that prompt instead
    (the first run then stops at its first token)."""
    bar = ProgressBar(label, gen_tokens)

    def cold(tokens: list[int], max_tokens: int):
        model.reset()
        stream = model.stream(tokens, max_tokens=max_tokens, temperature=0, ignore_eos=True)
        for n, _ in enumerate(stream, start=1):
            # pieces ~ tokens: fine for a progress display; the bar completes once timings are known
            bar.update(min(n, gen_tokens - 1), "decoding")
        return stream.completion.timings

    t = p = cold(prompt, 1 if decode_prompt is not None else gen_tokens)
    if decode_prompt is not None:
        t = cold(decode_prompt, gen_tokens)
    bar.update(gen_tokens, f"prefill {p.prefill_tokens_per_s:.1f} tok/s, "
                           f"decode {t.decode_tokens_per_s:.1f} tok/s")
    return {"prefill_tokens_per_s": p.prefill_tokens_per_s, "decode_tokens_per_s": t.decode_tokens_per_s,
            "prefill_s": p.prefill_s, "decode_s": t.decode_s}


def profile_stages(model, prompt: list[int], gen_tokens: int):
    """Seconds spent in embedding / layers / logits for one prefill and per decoded token, from
    the engine's own timers, and on the CPU the per-op profile of the decode (cpu_per_token);
    None when the engine has none."""
    engine = profiling_engine(model)
    if engine is None:
        return None
    import numpy as np

    try:
        tokens = np.asarray(prompt, dtype=np.int32)
        next_token = greedy.tokens(engine.forward_argmax(tokens, 0), len(prompt) - 1)[-1]
        prefill = dict(engine.last_profile())
        decode = dict.fromkeys(STAGES, 0.0)
        cpu_profile = getattr(engine, "cpu_profile", None)
        if cpu_profile:
            cpu_profile(reset=True)     # the decode's alone
        for i in range(gen_tokens):
            next_token = greedy.tokens(engine.forward_argmax(np.asarray([next_token], np.int32), len(prompt) + i),
                                       len(prompt) + i)[-1]
            for stage in STAGES:
                decode[stage] += engine.last_profile()[stage]
        cpu = cpu_per_token(cpu_profile(), gen_tokens) if cpu_profile else None
    finally:
        engine.set_profiling(False)
        model.reset()    # the cache now holds tokens the model's prompt cache does not know about
    return {"prefill": prefill, "decode_per_token": {k: v / gen_tokens for k, v in decode.items()}, "cpu": cpu}


def run(args) -> int:
    _check_args(args)
    model = load_model(args)
    if args.prompt_tokens + args.gen_tokens > model.n_ctx:
        raise UserError(f"--prompt-tokens {args.prompt_tokens} + --gen-tokens {args.gen_tokens} do not "
                        f"fit the context of {model.n_ctx} tokens (raise --n-ctx)")
    depth = args.prompt_tokens if args.decode_depth is None else args.decode_depth
    if depth + args.gen_tokens > model.n_ctx:
        raise UserError(f"--decode-depth {depth} + --gen-tokens {args.gen_tokens} do not fit the context "
                        f"of {model.n_ctx} tokens (raise --n-ctx)")
    prompt = prompt_of_length(model, args.prompt_tokens)
    # The decode's own prompt: `depth` tokens, at least one (a first token to decode from).
    decode_prompt = None if depth == args.prompt_tokens else prompt_of_length(model, max(depth, 1))
    model.generate(prompt[:8], max_tokens=2, temperature=0)     # warm-up: first-touch of the weights
    runs = [measure(model, prompt, args.gen_tokens, f"run {i + 1}/{args.repeats}", decode_prompt)
            for i in range(args.repeats)]
    result = {
        "model": model.info()["name"], "backend": model.backend, "threads": model.threads,
        "activations": model.activations,
        "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens, "repeats": args.repeats,
        "decode_depth": len(decode_prompt) if decode_prompt is not None else depth,
        "prefill_tokens_per_s": statistics.median(r["prefill_tokens_per_s"] for r in runs),
        "decode_tokens_per_s": statistics.median(r["decode_tokens_per_s"] for r in runs),
        "runs": runs,
    }
    if args.profile:
        result["profile"] = profile_stages(model, prompt, args.gen_tokens)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_text(result))
    return 0


def format_text(r: dict) -> str:
    lines = [
        f"{r['model']} on {r['backend']}" + (f", activations {r['activations']}" if r.get("activations", "int16") != "int16" else "")
        + f", median of {r['repeats']} runs",
        f"  prefill  {r['prompt_tokens']:>5} tokens  {r['prefill_tokens_per_s']:10.1f} tok/s",
        f"  decode   {r['gen_tokens']:>5} tokens  {r['decode_tokens_per_s']:10.1f} tok/s",
    ]
    if "profile" in r:
        p = r["profile"]
        if p is None:
            lines.append("  profile: this engine has no per-stage timers")
        else:
            lines.append("  stage       prefill (ms)   decode (ms/token)")
            for stage in STAGES:
                lines.append(f"  {stage:<10} {p['prefill'][stage] * 1e3:12.2f}   "
                             f"{p['decode_per_token'][stage] * 1e3:17.3f}")
            if p.get("cpu"):
                lines += format_cpu_table(p["cpu"])
    return "\n".join(lines)
