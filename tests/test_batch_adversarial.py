"""Continuous batching as a hostile or unlucky user drives it: the server's batch
(server/batch_worker.py) driven in-process through BatchWorker.events, the way the HTTP routes
drive it, on the tiny untied Llama (F32, CPU, n_ctx 64, two batch slots). Each request's
temperature-0 output must equal its prompt generated alone by a one-slot Model (its reference),
and every slot must be free once the requests are done."""
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
