"""Continuous batching as a hostile or unlucky user drives it: the server's batch
(server/batch_worker.py) driven in-process through BatchWorker.events, the way the HTTP routes
drive it, on the tiny untied Llama (F32, CPU, n_ctx 64, two batch slots). Each request's
temperature-0 output must equal its prompt generated alone by a one-slot Model (its reference),
and every slot must be free once the requests are done. Then the Python API's batches (a list of
prompts to Model.generate / stream): streams abandoned midway, threads sharing one Model."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from forgert.server.generation import ChoiceSpec, Finish, GenerationSpec, Piece

N_CTX = 64


@pytest.fixture(scope="module")
def path(tiny_models):
    return str(tiny_models("llama3_untied").path("gguf-F32"))


@pytest.fixture(scope="module")
def alone(path):
    import forgert
    return forgert.Model(path, backend="cpu", threads=1, n_ctx=N_CTX)


@pytest.fixture(scope="module")
def worker(path):
    import forgert
    from forgert.server.batch_worker import BatchWorker
    return BatchWorker(forgert.Model(path, backend="cpu", threads=1, n_ctx=N_CTX, parallel=3))


def token_ids(n, seed):
    return np.random.default_rng(seed).integers(3, 200, n).tolist()


def greedy_spec(ids, max_tokens=8, n=1):
    sampling = dict(max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, presence_penalty=0.0,
                    frequency_penalty=0.0, repetition_penalty=1.0, stop=[], ignore_eos=True)
    return GenerationSpec([ChoiceSpec(list(ids), counts_prompt=j == 0) for j in range(n)], sampling, None)


async def _collect(worker, spec):
    events = []
    async for event in worker.events(spec):
        events.append(event)
    return events


def run(worker, specs):
    """Each spec's events, all requests in flight together."""
    async def main():
        return await asyncio.gather(*[_collect(worker, s) for s in specs])
    return asyncio.run(main())


def text(events, index=0):
    return "".join(e.text for e in events if isinstance(e, Piece) and e.index == index)


def assert_all_slots_free(worker):
    sched = worker.scheduler
    deadline = time.monotonic() + 30
    while (worker.queued or sched.busy) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.queued == 0 and not sched.busy and sorted(sched.free_slots) == [1, 2]


def test_a_list_batch_beside_the_servers_batch_keeps_off_its_slots(worker, alone):
    """generate() with a list of prompts on the Model a server batches over, between two of the
    server's steps (the Model's lock is free then; here the batch thread itself calls it, which
    is what another thread winning the lock does): it ran in every KV slot, overwriting the K/V
    of the paused request, whose output then changed."""
    model = worker.model
    request = token_ids(30, 1)
    listed = [token_ids(40, 5), token_ids(35, 6), token_ids(20, 7)]
    run_once, got = worker._run_once, []

    def run_once_then_a_list_batch(new):
        run_once(new)
        if worker.scheduler.steps == 3 and not got:
            got.append(model.generate(listed, max_tokens=10, temperature=0, ignore_eos=True))
    worker._run_once = run_once_then_a_list_batch
    try:
        events = run(worker, [greedy_spec(request, max_tokens=20)])[0]
    finally:
        del worker._run_once
    assert got, "the list batch did not run between the server's steps"
    assert text(events) == alone.generate(request, max_tokens=20, temperature=0, ignore_eos=True).text
    assert [c.text for c in got[0]] == [alone.generate(p, max_tokens=10, temperature=0, ignore_eos=True).text
                                        for p in listed]
    assert_all_slots_free(worker)


def test_a_second_server_batch_over_the_same_slots_is_refused(worker):
    from forgert.server.batch_worker import BatchWorker
    with pytest.raises(ValueError, match=r"KV slots \[1, 2\] already serve another server's batch"):
        BatchWorker(worker.model)


def sampled_spec(ids, n=1, max_tokens=8, seed=0, top_logprobs=None, echo=None, response_format=None,
                 logit_bias=None, **sampling):
    spec = greedy_spec(ids, max_tokens, n)
    spec.sampling.update(sampling)
    for j, choice in enumerate(spec.choices):
        choice.seed, choice.echo = seed + j, echo
    spec.top_logprobs, spec.response_format, spec.logit_bias = top_logprobs, response_format, logit_bias
    return spec


def single_path(model, spec):
    """The request's events on the single-sequence path (generation.generation_job), by choice."""
    from forgert.server.generation import generation_job
    return list(generation_job(model, spec)())


def assert_same_events(got, want):
    """Per choice: the same text, logprobs, finish reason, stop string and token counts."""
    def by_choice(events):
        out = {}
        for e in events:
            c = out.setdefault(e.index, {"text": "", "logprobs": [], "finish": []})
            if isinstance(e, Piece):
                c["text"] += e.text
                c["logprobs"] += [(lp.token, lp.logprob) for lp in e.logprobs or ()]
            else:
                c["finish"].append((e.finish_reason, e.prompt_tokens, e.completion_tokens, e.stop_string))
        return out
    assert by_choice(got) == by_choice(want)


def test_clients_leaving_at_every_phase_free_their_slots(worker, alone):
    """One of four requests leaves after k steps (k = 0: still queued; then in its prefill, mid-
    decode, after its last token): the others equal their prompts alone, every slot comes back,
    and later requests still equal theirs."""
    sched = worker.scheduler
    for k in range(12):
        prompts = [token_ids(40, 100 + k), token_ids(6, 200 + k), token_ids(9, 300 + k), token_ids(3, 400 + k)]

        async def leave_after_k_steps():
            tasks = [asyncio.ensure_future(_collect(worker, greedy_spec(p))) for p in prompts]
            leaving, start = tasks[k % 4], sched.steps
            while not leaving.done() and sched.steps < start + k:
                await asyncio.sleep(0.0005)
            leaving.cancel()
            return await asyncio.gather(*tasks, return_exceptions=True)
        results = asyncio.run(leave_after_k_steps())
        assert_all_slots_free(worker)
        for i, (p, events) in enumerate(zip(prompts, results)):
            if i != k % 4:
                assert text(events) == alone.generate(p, max_tokens=8, temperature=0, ignore_eos=True).text
    later = token_ids(20, 7)
    assert text(run(worker, [greedy_spec(later)])[0]) == alone.generate(later, max_tokens=8, temperature=0,
                                                                          ignore_eos=True).text


def test_a_mixed_batch_equals_the_single_path(worker, alone):
    """n > 1 choices with stop strings ending them at different tokens, a prompt + max_tokens
    filling the context exactly, max_tokens 1 and 0, logprobs, echo (with and without logprobs),
    response_format and logit_bias: all in one batch, each request's events (text, logprobs,
    finish_reason, usage) equal to the single-sequence path's."""
    json_object = alone.compile_response_format({"type": "json_object"})
    specs = [sampled_spec(token_ids(10, 1), n=3, max_tokens=12, seed=10, temperature=0.9, stop=["a", "e"]),
             sampled_spec(token_ids(56, 2), max_tokens=8),                  # 56 + 8 = the context
             sampled_spec(token_ids(20, 3), max_tokens=1, top_logprobs=3),
             sampled_spec(token_ids(7, 4), max_tokens=4, top_logprobs=2, echo="ECHO"),
             sampled_spec(token_ids(7, 4), n=2, max_tokens=4, echo="ECHO"),
             sampled_spec(token_ids(9, 5), max_tokens=20, response_format=json_object),
             sampled_spec(token_ids(9, 6), max_tokens=5, logit_bias={5: 100, 7: -100}),
             sampled_spec(token_ids(11, 7), max_tokens=0),
             sampled_spec(token_ids(30, 8), n=2, max_tokens=3, top_logprobs=1, echo="X", seed=20, temperature=0.5),
             sampled_spec(token_ids(63, 9), max_tokens=1)]
    for got, spec in zip(run(worker, specs), specs):
        assert_same_events(got, single_path(alone, spec))
    assert_all_slots_free(worker)


class _FailingMatcher:
    """A grammar's matcher that fails once `at` tokens were accepted, in mask(), apply() or accept()."""

    def __init__(self, where, at):
        self.where, self.at, self.accepted, self.done = where, at, 0, False

    def mask(self):
        if self.where == "mask" and self.accepted >= self.at:
            raise RuntimeError("mask failed")
        return None

    def apply(self, row, allowed):
        if self.where == "apply" and self.accepted >= self.at:
            raise ValueError("apply failed")
        return row

    def accept(self, token):
        self.accepted += 1
        if self.where == "accept" and self.accepted >= self.at:
            raise KeyError("accept failed")


class _FailingGrammar:
    def __init__(self, where, at):
        self.where, self.at = where, at

    def matcher(self):
        if self.where == "matcher":
            raise ValueError("matcher failed")
        return _FailingMatcher(self.where, self.at)


@pytest.mark.parametrize("where,at", [("matcher", 0), ("mask", 0), ("mask", 3), ("apply", 1), ("accept", 2)])
def test_a_request_failing_mid_generation_fails_alone(worker, alone, where, at):
    """Its error comes back to it alone; the requests beside it (one of two sampled choices)
    equal the single path and every slot comes back."""
    others = [sampled_spec(token_ids(12, 10 + at)), sampled_spec(token_ids(30, 11), n=2, seed=3, temperature=0.7)]
    failing = sampled_spec(token_ids(8, 12), n=2, response_format=_FailingGrammar(where, at))

    async def main():
        return await asyncio.gather(*[_collect(worker, s) for s in [others[0], failing, others[1]]],
                                    return_exceptions=True)
    got = asyncio.run(main())
    assert isinstance(got[1], Exception) and f"{where} failed" in str(got[1])
    assert_same_events(got[0], single_path(alone, others[0]))
    assert_same_events(got[2], single_path(alone, others[1]))
    assert_all_slots_free(worker)


def test_an_engine_failure_fails_the_running_requests_and_the_batch_serves_on(worker, alone):
    engine = worker.model._engine
    sched = worker.scheduler

    class FailingOnce:
        """The engine, but its third batched pass raises."""
        def __init__(self):
            self.passes = 0

        def __getattr__(self, name):
            attr = getattr(engine, name)
            if not name.startswith("forward_batch"):
                return attr

            def counted(*args):
                self.passes += 1
                if self.passes == 3:
                    raise MemoryError("the pass failed")
                return attr(*args)
            return counted
    sched.engine = FailingOnce()
    try:
        got = asyncio.run(_gather_settled(worker, [greedy_spec(token_ids(20, 1)), greedy_spec(token_ids(5, 2))]))
    finally:
        sched.engine = engine
    assert all(isinstance(g, MemoryError) for g in got)
    assert_all_slots_free(worker)
    later = [token_ids(20, 1), token_ids(33, 3)]
    for p, events in zip(later, run(worker, [greedy_spec(p) for p in later])):
        assert text(events) == alone.generate(p, max_tokens=8, temperature=0, ignore_eos=True).text


async def _gather_settled(worker, specs):
    return await asyncio.gather(*[_collect(worker, s) for s in specs], return_exceptions=True)


# -- the Python API: Model.generate / stream with a list of prompts ---------------------------

@pytest.fixture(scope="module")
def batched(path):
    import forgert
    return forgert.Model(path, backend="cpu", threads=1, n_ctx=N_CTX, parallel=2)


@pytest.mark.parametrize("how", ["break", "close", "del", "raise"])
def test_a_stream_abandoned_midway_leaves_the_model_as_new(batched, alone, how):
    """A batch's stream left after k pieces (the loop broken, the stream closed, dropped, or the
    consumer raising): the next generate, of a batch or of one prompt, equals the prompts alone."""
    prompts = [token_ids(n, 50 + n) for n in (5, 30, 12, 3)]
    want = [alone.generate(p, max_tokens=8, temperature=0, ignore_eos=True).text for p in prompts]
    for k in range(0, 12, 3):
        s = batched.stream(prompts, max_tokens=8, temperature=0, ignore_eos=True)
        try:
            for i, _ in enumerate(s):
                if i >= k:
                    if how == "raise":
                        raise ZeroDivisionError
                    break
        except ZeroDivisionError:
            pass
        if how == "close":
            s.close()
        else:
            del s
        assert [c.text for c in batched.generate(prompts, max_tokens=8, temperature=0, ignore_eos=True)] == want
        assert batched.generate(prompts[1], max_tokens=8, temperature=0, ignore_eos=True).text == want[1]


def test_threads_sharing_a_model_with_lists_take_turns(batched, alone):
    import threading
    lists = [[token_ids(n, 70 + 10 * t + n) for n in (4, 20, 9)] for t in range(4)]
    want = [[alone.generate(p, max_tokens=6, temperature=0, ignore_eos=True).text for p in ps] for ps in lists]
    got, errors = [None] * 4, []

    def use(t):
        try:
            for _ in range(3):
                got[t] = [c.text for c in batched.generate(lists[t], max_tokens=6, temperature=0, ignore_eos=True)]
                assert got[t] == want[t]
                s = batched.stream(lists[t], max_tokens=6, temperature=0, ignore_eos=True)
                next(s)
                s.close()   # abandoned after its first piece: the next thread's turn
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=use, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and got == want


def test_more_slots_than_rows_in_a_pass_run_as_many_as_fit(alone):
    """An engine with more KV slots than rows in one pass (Model(parallel=520) has 512 rows):
    every sequence running took a decode row, so a full batch asked the engine for more rows than
    it evaluates and every sequence failed ("batch of 520 tokens exceeds max_batch 512"). At most
    max_batch sequences run; the others wait for a slot as beyond the slots."""
    from forgert import _core
    from forgert.batch import run_batch
    from forgert.sampling import SamplingParams
    engine = _core.Engine(alone._model.config.core_dict(N_CTX), alone._model.core_tensors, backend="cpu",
                          n_threads=1, max_batch=4, n_slots=6)
    prompts = [token_ids(1, 600 + i) for i in range(5)] + [token_ids(9, 606)]   # five first rows at once
    params = [SamplingParams.from_kwargs(None, max_tokens=6, temperature=0.0, ignore_eos=True)] * len(prompts)
    batch = run_batch(engine, alone.tokenizer, prompts, params, prefill_chunk=16)
    while True:
        try:
            next(batch)
        except StopIteration as done:
            got = done.value
            break
    assert [c.text for c in got] == [alone.generate(p, max_tokens=6, temperature=0, ignore_eos=True).text
                                     for p in prompts]


def test_conversations_taking_turns_beside_others_equal_fresh_runs(worker, alone):
    """Each turn's prompt is the last prompt + its answer + a new message: the batch resumes it in
    the slot holding that history (its answer's K/V computed as decode rows beside the other
    requests) and gives a fresh Model's whole-prompt run's tokens; the logprobs differ in the last
    bits only, as docs/design.md "Batch invariance" says of an answer's K/V (measured 2.3e-5)."""
    conversations = [token_ids(8, 1), token_ids(12, 2), token_ids(5, 3)]
    cached, worst = 0, 0.0
    for turn in range(3):
        specs = [sampled_spec(c, max_tokens=10, top_logprobs=1) for c in conversations]
        for got, spec in zip(run(worker, specs), specs):
            alone.reset()
            want = single_path(alone, spec)
            assert text(got) == text(want)
            assert [e for e in got if isinstance(e, Finish)][0].completion_tokens == 10
            lps = [[lp for e in events if isinstance(e, Piece) for lp in e.logprobs] for events in (got, want)]
            assert [lp.token for lp in lps[0]] == [lp.token for lp in lps[1]]
            worst = max([worst] + [abs(a.logprob - b.logprob) for a, b in zip(*lps)])
            cached += next(e for e in got if isinstance(e, Finish)).timings["cached_tokens"]
        conversations = [c + alone.generate(c, max_tokens=10, temperature=0, ignore_eos=True).tokens
                         + token_ids(3, 9 + turn) for c in conversations]
    assert cached > 0 and worst < 1e-4  # the history was resumed, not evaluated again
    assert_all_slots_free(worker)


def test_a_failure_while_admitting_frees_the_slot(worker, alone, monkeypatch):
    """The engine failing while a prompt takes its slot (loading a recurrent state checkpoint
    there, batch.resume): the slot was taken from the free ones before the sequence ran, and never
    given back, so the batch had a slot fewer for good."""
    import forgert.batch as batch
    real, calls = batch.resume, []

    def failing_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("the state did not load")
        return real(*args)
    monkeypatch.setattr(batch, "resume", failing_once)
    got = asyncio.run(_gather_settled(worker, [greedy_spec(token_ids(20, 1))]))
    assert isinstance(got[0], MemoryError)
    assert_all_slots_free(worker)
    later = [token_ids(20, 1), token_ids(33, 3)]
    for p, events in zip(later, run(worker, [greedy_spec(p) for p in later])):
        assert text(events) == alone.generate(p, max_tokens=8, temperature=0, ignore_eos=True).text
