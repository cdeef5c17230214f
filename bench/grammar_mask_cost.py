"""Per-token cost of a JSON-schema token mask: llguidance vs xgrammar on SmolLM2's vocabulary.

Both engines walk the same documents token by token (the model tokenizer's own tokenization of
a valid document): at each step compute the allowed-token mask, check that the document's next
token is allowed (correctness), then consume it. Reported: compile time, and the median / p95 /
mean mask time per token. Correctness also checks that a document violating the schema is refused.

    python bench/grammar_mask_cost.py [--model PATH]      # writes bench/results/grammar_mask_cost.md
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 8},
        "address": {"type": "object", "properties": {"city": {"type": "string"},
                                                     "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["city", "zip"], "additionalProperties": False},
        "status": {"enum": ["active", "inactive", "banned"]},
    },
    "required": ["name", "age", "email", "tags", "address", "status"],
    "additionalProperties": False,
}
DOCS = [
    {"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "tags": ["math", "engines", "poetry"],
     "address": {"city": "London", "zip": "12345"}, "status": "active"},
    {"name": "Grace Hopper, Rear Admiral", "age": 85, "email": "grace@navy.mil",
     "tags": ["cobol", "compilers", "bugs", "nanoseconds"],
     "address": {"city": "Arlington", "zip": "22202"}, "status": "inactive"},
]
BAD_DOC = {"name": "x", "age": -1, "email": "e", "tags": [], "address": {"city": "c", "zip": "1"},
           "status": "active"}


def documents(tokenizer) -> list[list[int]]:
    return [tokenizer.encode(json.dumps(d), add_bos=False) for d in DOCS]


def run_llguidance(model, docs, bad):
    import llguidance

    from forgert.grammar import _ll_tokenizer, compile_schema
    _ll_tokenizer(model.tokenizer, model.vocab_size)     # built once per model, like xgrammar's TokenizerInfo
    t0 = time.perf_counter()
    grammar = compile_schema(SCHEMA, model.tokenizer, model.vocab_size)
    compile_s = time.perf_counter() - t0
    times, ok = [], True
    for doc in docs:
        m = grammar.matcher()
        for tok in doc:
            t = time.perf_counter()
            allowed = m.mask()
            times.append(time.perf_counter() - t)
            ok &= bool(allowed[tok])
            m.accept(tok)
        eos = m.mask()
        ok &= bool(eos[model.tokenizer.eos_id]) and int(eos.sum()) <= len(model.tokenizer.stop_ids)
    m = llguidance.LLMatcher(grammar.tokenizer, grammar.source, log_level=0)
    refused = m.validate_tokens(bad) < len(bad)
    return compile_s, times, ok and refused


def run_xgrammar(model, docs, bad):
    import torch  # noqa: F401  (xgrammar's bitmasks are torch tensors)
    import transformers
    import xgrammar as xgr
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=model.tokenizer.hf)
    info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=model.vocab_size,
                                              stop_token_ids=sorted(model.tokenizer.stop_ids))
    t0 = time.perf_counter()
    compiled = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(SCHEMA), any_whitespace=False,
                                                             separators=(", ", ": "))
    compile_s = time.perf_counter() - t0
    times, ok = [], True
    bitmask = xgr.allocate_token_bitmask(1, model.vocab_size)
    for doc in docs:
        m = xgr.GrammarMatcher(compiled)
        for tok in doc:
            t = time.perf_counter()
            m.fill_next_token_bitmask(bitmask)
            words = bitmask[0].numpy().view(np.uint8)
            allowed = np.unpackbits(words, bitorder="little")[:model.vocab_size].astype(bool)
            times.append(time.perf_counter() - t)
            ok &= bool(allowed[tok])
            ok &= m.accept_token(tok)
    m = xgr.GrammarMatcher(compiled)
    refused = not all(m.accept_token(t) for t in bad)
    return compile_s, times, ok and refused


def main():
    import forgert
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "grammar_mask_cost.md"))
    args = ap.parse_args()
    model = forgert.Model(args.model, n_ctx=256)
    docs = documents(model.tokenizer)
    bad = model.tokenizer.encode(json.dumps(BAD_DOC), add_bos=False)
    rows = []
    for name, fn in (("llguidance", run_llguidance), ("xgrammar", run_xgrammar)):
        try:
            import importlib.metadata as md
            version = md.version(name)
            compile_s, times, ok = fn(model, docs, bad)
        except ImportError as e:
            rows.append(f"| {name} | not installed ({e}) | | | | | |")
            continue
        ms = sorted(t * 1e3 for t in times)
        rows.append(f"| {name} {version} | {compile_s * 1e3:.1f} ms | {len(ms)} | {statistics.median(ms):.3f} ms "
                    f"| {ms[int(len(ms) * 0.95)]:.3f} ms | {statistics.mean(ms):.3f} ms | {'yes' if ok else 'NO'} |")
    table = "\n".join([
        f"Token-mask cost, JSON schema with nested object, enum, pattern, array ({model.vocab_size}-token "
        f"vocabulary, {os.path.basename(model.path)}); mask time includes unpacking to a NumPy bool row.",
        "",
        "| engine | compile | tokens | median mask | p95 mask | mean mask | correct |",
        "|---|---:|---:|---:|---:|---:|---|",
        *rows, ""])
    print(table)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("# Grammar engines: per-token mask cost\n\n" + table)


if __name__ == "__main__":
    main()
