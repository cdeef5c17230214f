"""Batch invariance on the CPU (README "Identical results", docs/design.md "Batch invariance"): a
sequence's temperature-0 tokens and logits are bit-identical alone and in a batch whose steps also
carry another prompt's prefill chunks (a long prompt admitted mid-decode), for any prefill chunk
size; and a prompt's K/V do not depend on how its prefix was cut into chunks.

The reference is the sequence evaluated alone through the engine's single-sequence calls
(Engine.prefill of the whole prefix, then Engine.forward one token at a time: what Model.generate
does), so equality is exact (np.array_equal), not a tolerance: every decode row takes the
few-token kernels and every prompt-prefix row the prefill GEMM, whatever else shares the step.
Models: tiny random Llama (GGUF Q4_0, Q8_0, and the Q4_K_M mix: Q4_K / Q6_K), a tiny Mixtral
(Q8_0, Q4_0: matmul_id groups each expert's decode and prefix slots apart). Both CPU activation
formats (forgert.Model's activations="int16", the default, and "int8": one int8 part a value).
"""
from __future__ import annotations

import numpy as np
import pytest

import kquant_writer as kw
import model_factory as mf
import moe_factory as moe

N_CTX = 160
LONG_CTX = 640      # past 2 and 4 x 128 keys: a lone decode step splits its keys into ranges
STEPS = 12          # decode steps of every sequence


def token_ids(vocab, n, seed):
    return np.random.default_rng(seed).integers(0, vocab, n).tolist()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, tiny_tokenizer):
    """get(kind) -> path of a GGUF: 'llama-Q4_0', 'llama-Q8_0', 'llama-Q4_K_M', 'mixtral-Q8_0', ..."""
    root = tmp_path_factory.mktemp("invariance")
    cache = {}

    def get(kind):
        if kind not in cache:
            arch, t = kind.split("-", 1)
            if arch == "llama" and t == "Q4_K_M":   # hidden 256: whole K-quant super-blocks
                spec = mf.TinySpec(name="llama_kq", arch="llama", hidden=256, n_layers=2, n_heads=4, n_kv_heads=2,
                                   ffn=512, tie_embeddings=False, rope_theta=10000.0, rms_eps=1e-5, seed=11)
                tm = mf.make_tiny_model(spec, root, tiny_tokenizer, hf_dtypes=(), gguf_types=())
                tensors = mf.gguf_tensors(tm.model, spec)
                cache[kind] = mf.write_gguf(tm.model, spec, tm.tokenizer, tm.root / "kq.gguf", "F32",
                                            tensors=tensors, raw_overrides=kw.mix_overrides(tensors, t))
            elif arch == "llama":
                tm = mf.make_tiny_model(mf.SPECS["llama3_untied"], root / t, tiny_tokenizer, hf_dtypes=(),
                                        gguf_types=(t,))
                cache[kind] = tm.path(f"gguf-{t}")
            else:
                vocab = tiny_tokenizer.get_vocab_size()
                model = moe.build_mixtral(vocab)
                hf_dir = moe.save_hf(model, tiny_tokenizer, root / kind / "hf")
                cache[kind] = moe.write_gguf(hf_dir, root / kind / "m.gguf", t, "llama", model.config, tiny_tokenizer)
        return cache[kind]

    return get


@pytest.fixture
def engine(forgert):
    def make(path, slots=4, threads=2, n_ctx=N_CTX, activations="int16"):
        return forgert.Model(str(path), backend="cpu", threads=threads, n_ctx=n_ctx, parallel=slots,
                             activations=activations)._engine
    return make


def alone(eng, prompt, steps=STEPS, cached=0):
    """The single-sequence path (slot 0): the prefix in one Engine.prefill, then one token at a
    time through Engine.forward. Returns (tokens, logits f32 [steps, vocab]). cached: the first
    tokens' K/V are already in the slot (a prompt-cache hit): only the rest is prefilled."""
    if len(prompt) - 1 > cached:
        eng.prefill(np.asarray(prompt[cached:-1], np.int32), cached)
    tok, pos, toks, rows = prompt[-1], len(prompt) - 1, [], []
    for _ in range(steps):
        row = np.array(np.asarray(eng.forward(np.asarray([tok], np.int32), pos))[-1])
        tok = int(np.argmax(row))
        toks.append(tok)
        rows.append(row)
        pos += 1
    return toks, np.stack(rows)


def batched(eng, prompts, late_prompt, admit_at, chunk, steps=STEPS, prefill_first=False):
    """prompts decode from the start (slots 1..), each prefilled in chunks of `chunk` in shared
    passes; at step admit_at late_prompt (slot 0) is admitted and its prefix prefilled `chunk`
    tokens per step beside the decode rows, then its last token joins them. Entries go decode
    rows first, or (prefill_first) the prefill chunk first: the engine orders them itself.
    Returns [(tokens, logits [steps, vocab])] per prompt, late_prompt last."""
    seqs = [{"slot": i + 1, "prompt": p, "done": 0} for i, p in enumerate(prompts)]
    late = {"slot": 0, "prompt": late_prompt, "done": 0}
    for s in seqs + [late]:
        s.update(toks=[], rows=[], next=None)

    def prefill_entry(s):
        n = min(chunk, len(s["prompt"]) - 1 - s["done"])
        e = (s["slot"], np.asarray(s["prompt"][s["done"]:s["done"] + n], np.int32), s["done"], None, True)
        s["done"] += n
        return e

    for s in seqs:   # the early prompts' prefixes, several chunks per pass
        while s["done"] < len(s["prompt"]) - 1:
            eng.forward_batch([prefill_entry(s)])
    step = 0
    while any(len(s["toks"]) < steps for s in seqs + [late]):
        active = [s for s in seqs if len(s["toks"]) < steps]
        if step >= admit_at and len(late["toks"]) < steps:
            active.append(late)
        decode, prefill, owners = [], [], []
        for s in active:
            if s["done"] < len(s["prompt"]) - 1:
                prefill.append(prefill_entry(s))
            else:
                tok = s["prompt"][-1] if s["next"] is None else s["next"]
                decode.append((s["slot"], np.asarray([tok], np.int32), len(s["prompt"]) - 1 + len(s["toks"])))
                owners.append(s)
        entries = prefill + decode if prefill_first else decode + prefill
        logits = np.asarray(eng.forward_batch(entries))
        first = len(prefill) if prefill_first else 0
        for i, s in enumerate(owners):
            row = np.array(logits[first + i])
            s["next"] = int(np.argmax(row))
            s["toks"].append(s["next"])
            s["rows"].append(row)
        step += 1
    return [(s["toks"], np.stack(s["rows"])) for s in seqs + [late]]


def check_invariant(eng, vocab, chunk, prefill_first=False, n_decoders=3, lengths=(9, 2, 21, 5, 13, 3, 30),
                    late_len=70):
    prompts = [token_ids(vocab, lengths[i % len(lengths)] + i // len(lengths), i) for i in range(n_decoders)]
    late_prompt = token_ids(vocab, late_len, seed=99)   # long: its prefix spans several steps' chunks
    got = batched(eng, prompts, late_prompt, admit_at=3, chunk=chunk, prefill_first=prefill_first)
    for i, (p, (toks, rows)) in enumerate(zip(prompts + [late_prompt], got)):
        ref_toks, ref_rows = alone(eng, p)
        assert toks == ref_toks, f"sequence {i} (prompt of {len(p)}), prefill chunk {chunk}: tokens differ"
        diff = np.abs(rows - ref_rows).max()
        assert np.array_equal(rows, ref_rows), f"sequence {i}, chunk {chunk}: logits differ by up to {diff}"


@pytest.mark.parametrize("kind", ["llama-Q4_0", "llama-Q8_0", "llama-Q4_K_M"])
@pytest.mark.parametrize("chunk", [1, 7, 16, 33])
def test_dense_decode_rows_alone_equal_batched_with_prefill(model_files, engine, tiny_tokenizer, kind, chunk):
    """Chunk 1: one-token prefix chunks (marked prefix: the GEMM, not the decode kernels); 7: below
    the GEMM's usual 16-token threshold; 16, 33: a step of >= 16 rows, which before took the GEMM
    for the decode rows too."""
    check_invariant(engine(model_files(kind)), tiny_tokenizer.get_vocab_size(), chunk, prefill_first=chunk == 7)


@pytest.mark.parametrize("kind", ["mixtral-Q8_0", "mixtral-Q4_0"])
@pytest.mark.parametrize("chunk", [5, 33])
def test_moe_decode_rows_alone_equal_batched_with_prefill(model_files, engine, tiny_tokenizer, kind, chunk):
    """matmul_id: an expert chosen by decode tokens and by a prefill chunk in one step runs its
    decode slots through the few-token kernels and the chunk's through the GEMM."""
    check_invariant(engine(model_files(kind)), tiny_tokenizer.get_vocab_size(), chunk, prefill_first=chunk == 5)


@pytest.mark.parametrize("kind", ["llama-Q4_0", "llama-Q8_0", "llama-Q4_K_M", "mixtral-Q4_0"])
@pytest.mark.parametrize("chunk", [7, 33])
def test_one_part_activations_decode_rows_alone_equal_batched(model_files, engine, tiny_tokenizer, kind, chunk):
    """activations="int8": the decode kernels skip the lo parts' dots (AVX-512 / AMX), the prefill
    GEMM takes one part; a sequence's bits still do not depend on the batch."""
    eng = engine(model_files(kind), activations="int8")
    assert eng.cpu_activation_parts["decode"] == 1
    check_invariant(eng, tiny_tokenizer.get_vocab_size(), chunk, prefill_first=chunk == 7)


def test_more_decode_rows_than_one_kernel_run(model_files, engine, tiny_tokenizer):
    """18 decoding sequences and a prefill: decode rows in runs of at most 15 (the few-token
    kernels' limit), each row still bit-identical to its sequence alone."""
    eng = engine(model_files("llama-Q4_0"), slots=20)
    check_invariant(eng, tiny_tokenizer.get_vocab_size(), chunk=16, n_decoders=18)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_decode_rows_past_the_key_split(model_files, engine, tiny_tokenizer, threads):
    """Contexts past 256 and 512 keys: a lone decode step splits each KV head's keys into ranges
    (2 KV heads: 2 ranges with 2 threads from 256 keys, up to 4 with 4 threads from 512; with one
    thread, ranges of at most 512 keys), merged by log-sum-exp; a decode row in a batch takes the
    same ranges and merge, so its bits match."""
    eng = engine(model_files("llama-Q4_0"), threads=threads, n_ctx=LONG_CTX)
    check_invariant(eng, tiny_tokenizer.get_vocab_size(), chunk=48, lengths=(300, 530, 40), late_len=200)


def test_cached_prompt_prefix_gives_the_cold_bits(model_files, engine, tiny_tokenizer):
    """A prompt whose prefix is already in the slot (a shared system prompt, as the prompt cache
    and the batch scheduler's slot reuse find it) decodes to the bits of a cold prefill: the
    prefix rows' K/V do not depend on the chunks they came in. (Tokens that were evaluated as
    decode rows - the earlier prompt's last token, its answer - are not reused with these bits:
    README "Identical results".)"""
    eng = engine(model_files("llama-Q4_0"))
    vocab = tiny_tokenizer.get_vocab_size()
    system, first, second = token_ids(vocab, 30, 1), token_ids(vocab, 9, 2), token_ids(vocab, 11, 3)
    cold = alone(eng, system + second)
    alone(eng, system + first)               # the earlier conversation fills the slot
    toks, logits = alone(eng, system + second, cached=len(system))   # its first 30 tokens are cached prefix rows
    assert toks == cold[0]
    assert np.array_equal(logits, cold[1])


def test_server_streams_unchanged_by_a_long_prompt_arriving_mid_decode(model_files, tiny_tokenizer):
    """8 concurrent streams of a server with continuous batching: seven short requests decode,
    then a long prompt arrives, its prefill chunk sharing steps with their decode rows. Every
    stream's text and token logprobs equal the same request run alone, one after the other."""
    import json
    import threading

    import forgert
    import httpx
    from server_harness import LiveServer, wait_until

    path = str(model_files("llama-Q4_0"))
    prompts = [f"request {i}: " + "abc def " * (1 + 5 * i % 7) for i in range(7)]
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 3    # 96 tokens
    max_tokens = 24

    def body(prompt):
        return {"model": "x", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "ignore_eos": True, "logprobs": 1}

    def complete(base_url, prompt):
        text, lps = "", []
        with httpx.Client(timeout=600) as http:
            with http.stream("POST", base_url + "/v1/completions", json=body(prompt)) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        choice = json.loads(line[6:])["choices"]
                        if choice:
                            text += choice[0]["text"]
                            lps += (choice[0].get("logprobs") or {}).get("token_logprobs") or []
        return text, lps

    alone = forgert.Model(path, backend="cpu", threads=2, n_ctx=N_CTX)
    with LiveServer(alone, api_key=None) as live:   # one slot: each request alone, in turn
        reference = {p: complete(live.base_url, p) for p in prompts + [long_prompt]}
    model = forgert.Model(path, backend="cpu", threads=2, n_ctx=N_CTX, parallel=9)   # 8 batch slots
    with LiveServer(model, api_key=None) as live:
        worker = live.app.state.forgert.batch_worker
        sched = worker.scheduler
        mixed, steps, step, send_long = [], [0], sched.step, threading.Event()

        def counting_step():        # steps carrying decode rows and a prefill chunk at once
            if steps[0] == 0:
                wait_until(lambda: worker.queued >= len(prompts), 60, "the seven requests to arrive")
            if steps[0] == 4:       # they decode; the long prompt comes now (joins the next step)
                send_long.set()
                wait_until(lambda: worker.queued > len(prompts), 60, "the long prompt to arrive")
            decoding = sum(s.decoding for s in sched.running)
            prefilling = (any(not s.decoding and s.n_prefilled < len(s.prompt) - 1 for s in sched.running)
                          or (sched.waiting and sched.free_slots))   # admitted and prefilled in this step
            mixed.append(decoding > 0 and prefilling)
            steps[0] += 1
            return step()
        sched.step = counting_step
        got = {}
        threads = [threading.Thread(target=lambda p=p: got.__setitem__(p, complete(live.base_url, p)))
                   for p in prompts + [long_prompt]]
        try:
            for t in threads[:-1]:
                t.start()
            assert send_long.wait(120), "the short requests did not decode"
            threads[-1].start()
            for t in threads:
                t.join()
        finally:
            del sched.step
    assert any(mixed), "no step carried the long prompt's prefill beside decode rows"
    for p in prompts + [long_prompt]:
        assert got[p][0] == reference[p][0]
        assert got[p][1] == reference[p][1]    # the logprobs, exactly (floats through JSON round-trip)
        assert len(got[p][1]) == max_tokens


def test_smollm2_decode_rows_alone_equal_batched_with_prefill(smollm2_gguf, engine):
    """The real SmolLM2-135M Q4_1 (its prefix rows take the f32 panel GEMM, Q4_1 having no int8
    GEMM): the same bit-identity, a 70-token prompt arriving mid-decode in 33-token chunks."""
    eng = engine(smollm2_gguf, threads=2, n_ctx=N_CTX)
    check_invariant(eng, 49152, chunk=33)


def test_smollm2_one_part_activations_alone_equal_batched(smollm2_gguf, engine):
    """SmolLM2-135M Q4_1 with activations="int8" (its Q4_1 repacked into panels on AVX-512: the
    panel GEMVs without the lo dots): the same bit-identity."""
    eng = engine(smollm2_gguf, threads=2, n_ctx=N_CTX, activations="int8")
    check_invariant(eng, 49152, chunk=33)


def test_bad_prefix_marker_is_refused(model_files, engine):
    """The fifth item of a batch entry (the prefix marker) and the sixth (the decode-run marker)
    must be bools, and an entry has at most six items: a clear ValueError each."""
    eng = engine(model_files("llama-Q4_0"))
    with pytest.raises(ValueError, match="fifth item"):
        eng.forward_batch([(0, np.asarray([1, 2, 3], np.int32), 0, None, "yes")])
    with pytest.raises(ValueError, match="sixth item"):
        eng.forward_batch([(0, np.asarray([1, 2], np.int32), 0, None, False, 7)])
    with pytest.raises(ValueError, match="slot, tokens, pos"):
        eng.forward_batch([(0, np.asarray([1, 2], np.int32), 0, None, False, True, 7)])


@pytest.mark.parametrize("start, remaining, budget, full_budget, expected", [
    (0, 299, 64, 64, 64),      # a whole budget: 64 GEMM rows
    (256, 43, 64, 64, 43),     # the rest of the prefix, whatever its size
    (192, 70, 64, 64, 54),     # 64 would leave 6 rows past position 15: leave 16 instead
    (100, 50, 8, 64, 0),       # 8 GEMM rows now: wait for a step with room for 16
    (0, 50, 8, 64, 8),         # rows 0..7 take the decode kernels: no GEMM to fill
    (100, 50, 8, 8, 8),        # no step will have room for 16 (prefill_chunk 8): go on
    (0, 20, 12, 64, 12),       # leaving 16 rows would cut this chunk to 4: keep 12
    (2, 30, 20, 64, 20),       # a 10-row tail at positions 22..31 stays: 20 - 6 < 16
])
def test_prefix_chunk_length_avoids_short_gemm_chunks(start, remaining, budget, full_budget, expected):
    """The scheduler's cut of a prompt's prefix (hand-computed cases): a chunk past position 15 of
    fewer than 16 rows costs a GEMM pass of 16, so it is avoided where the budget allows."""
    from forgert.batch import prefix_chunk_length

    assert prefix_chunk_length(start, remaining, budget, full_budget) == expected
