"""A Model (and a bare _core.Engine) shared by threads: every entry point called from several
threads at once gives each caller what the same call made alone gives, and nothing hangs.

Each expected value is the same call made sequentially first; greedy and seeded sampling and
logits() from an empty context are deterministic on the CPU backend, so results compare exactly.
The logits are also checked against transformers. Every wait is bounded by DEADLINE_S: a hang
fails the test instead of blocking CI (the threads are daemons)."""
from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

import model_factory as mf

DEADLINE_S = 300.0
N_THREADS = 6
ROUNDS = 3
REPEATS = 30      # engine calls per thread
# Distinct first tokens: no two prompts share a cached prefix, so each result is independent of
# what another thread left in the cache (the prompt cache reuses only a shared prefix).
PROMPTS = [[10 + 7 * i, 3 + i, 50 + 11 * i, 9, 200 + i] for i in range(N_THREADS)]
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return tiny_models("llama_tied")


@pytest.fixture(params=[1, 2], ids=["threads1", "threads2"])
def model(tiny, request):
    """threads=2: the engine's thread pool is in play (two callers in it used to hang);
    threads=1: no pool, and unlocked callers silently got each other's logits."""
    import forgert
    m = forgert.Model(tiny.path("gguf-F32"), backend="cpu", threads=request.param, n_ctx=64)
    m._model.chat_template = CHAT_TEMPLATE   # the tiny model has none; chat() needs one
    return m


def run_concurrently(jobs: list) -> list:
    """Runs each job on its own thread, all released together; returns their results in order.
    Fails if any raises or is still running DEADLINE_S after the start."""
    results, errors = [None] * len(jobs), []
    go = threading.Barrier(len(jobs))

    def work(i):
        try:
            go.wait(timeout=DEADLINE_S)
            results[i] = jobs[i]()
        except BaseException as e:   # reported below, with the job's index
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + DEADLINE_S
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    hung = [i for i, t in enumerate(threads) if t.is_alive()]
    assert not hung, f"jobs {hung} still running after {DEADLINE_S} s: a hang"
    assert not errors, f"jobs raised: {errors}"
    return results


def entry_point_jobs(m, state) -> list:
    """One job per entry point (and thread); each returns a value that depends only on its
    arguments, whatever the other threads did to the cache in between."""
    def greedy(i):
        return lambda: m.generate(PROMPTS[i], max_tokens=10, temperature=0, ignore_eos=True).tokens

    def seeded(i):
        return lambda: m.generate(PROMPTS[i], max_tokens=10, temperature=0.9, seed=i, ignore_eos=True).tokens

    def streamed(i):
        def job():
            s = m.stream(PROMPTS[i], max_tokens=10, temperature=0, ignore_eos=True)
            pieces = list(s)
            return pieces, s.completion.tokens
        return job

    def half_stream(i):   # closed after its first piece or two: the lock must come back
        def job():
            s = m.stream(PROMPTS[i], max_tokens=10, temperature=0, ignore_eos=True)
            out = list(itertools.islice(s, 2))
            s.close()
            return out
        return job

    def chat(i):
        msgs = [{"role": "user", "content": f"hi {i}"}]
        return lambda: m.chat(msgs, max_tokens=6, temperature=0, ignore_eos=True).tokens

    def logits(i):
        return lambda: m.logits(PROMPTS[i] + [7, 8, 9])

    def state_round_trip(i):
        def job():
            m.load_state(state)
            m.set_profiling(True)
            m.set_prompt_cache(1 << 20)
            saved = m.save_state()   # whatever is cached now; its K/V rows must be its tokens'
            m.reset()
            m.set_profiling(False)
            m.set_prompt_cache(0)
            assert saved.kv.shape[2] == len(saved.tokens)
            if saved.tokens == state.tokens:   # nothing ran in between: exactly the loaded rows
                np.testing.assert_array_equal(saved.kv, state.kv)
            return m.generate(PROMPTS[i], max_tokens=6, temperature=0, ignore_eos=True).tokens
        return job

    makers = [greedy, seeded, streamed, half_stream, chat, logits, state_round_trip]
    return [makers[(i + r) % len(makers)](i) for r in range(ROUNDS) for i in range(N_THREADS)]


def test_every_entry_point_from_many_threads_matches_sequential(model, tiny, reference_models):
    """Before the locks: threads hung in ThreadPool::run (two callers), or got "already
    generating", or silently got another thread's logits."""
    model.generate([1, 2, 3, 4], max_tokens=4, temperature=0, ignore_eos=True)
    state = model.save_state()
    sequential = [job() for job in entry_point_jobs(model, state)]
    model.reset()
    concurrent = run_concurrently(entry_point_jobs(model, state))
    for k, (want, got) in enumerate(zip(sequential, concurrent)):
        if isinstance(want, np.ndarray):
            np.testing.assert_array_equal(got, want, err_msg=f"job {k}")
        else:
            assert got == want, f"job {k}"
    # The sequential logits themselves against transformers (F32 weights, f16 KV cache
    # modelled): the bound of test_e2e_tiny's F32 logits check.
    ref_model = reference_models("llama_tied", "hf-F32")
    for i in range(N_THREADS):
        ids = PROMPTS[i] + [7, 8, 9]
        ref = mf.reference_logits(ref_model, ids)
        out = model.logits(ids)
        assert np.abs(out - ref).max() < 5e-4 * np.abs(ref).max()


def test_engine_shared_by_threads_matches_sequential(model):
    """_core.Engine on its own: forward, forward_argmax, prefill and kv_save from several
    threads at once, each from position 0, each equal to the same call made alone."""
    e = model._engine
    ids = [np.array(p + [7, 8], dtype=np.int32) for p in PROMPTS]

    def repeated(call):   # many calls per thread: overlapping calls are the common case
        return lambda: [call() for _ in range(REPEATS)]

    def jobs():
        out = []
        for i in range(N_THREADS):
            out.append(repeated(lambda i=i: np.asarray(e.forward(ids[i], 0, all_logits=True))))
            out.append(repeated(lambda i=i: e.forward_argmax(ids[i], 0)))
            out.append(repeated(lambda i=i: e.prefill(ids[i], 0)))
            out.append(repeated(lambda: e.kv_save(3).shape))
        return out

    sequential = [job() for job in jobs()]
    concurrent = run_concurrently(jobs())
    for k, (want, got) in enumerate(zip(sequential, concurrent)):
        for want_r, got_r in zip(want, got):
            if isinstance(want_r, np.ndarray):
                np.testing.assert_array_equal(got_r, want_r, err_msg=f"job {k}")
            else:
                assert got_r == want_r, f"job {k}"


def test_own_open_stream_refuses_other_calls_at_once(model):
    """The thread holding an open stream cannot wait for itself: each entry point raises
    RuntimeError at once (not a deadlock), and everything works once the stream is closed."""
    state = model.save_state()
    s = model.stream(PROMPTS[0], max_tokens=5, temperature=0, ignore_eos=True)
    next(s)
    calls = {
        "generate": lambda: model.generate(PROMPTS[1], max_tokens=2),
        "stream": lambda: model.stream(PROMPTS[1], max_tokens=2),
        "chat": lambda: model.chat([{"role": "user", "content": "x"}], max_tokens=2),
        "logits": lambda: model.logits(PROMPTS[1]),
        "save_state": model.save_state,
        "load_state": lambda: model.load_state(state),
        "reset": model.reset,
        "set_prompt_cache": lambda: model.set_prompt_cache(0),
        "set_profiling": lambda: model.set_profiling(False),
    }
    for name, call in calls.items():
        with pytest.raises(RuntimeError, match="already generating in this thread; finish or close"):
            call()
    s.close()
    for name, call in calls.items():
        call()


def test_other_threads_wait_for_an_open_stream(model):
    """Another thread's call waits until the stream is finished: the stream's text and the
    other thread's logits are both what they are alone. A stream dropped unfinished (garbage
    collected) gives the lock back too."""
    want_tokens = model.generate(PROMPTS[0], max_tokens=8, temperature=0, ignore_eos=True).tokens
    want_logits = model.logits(PROMPTS[1])
    s = model.stream(PROMPTS[0], max_tokens=8, temperature=0, ignore_eos=True)
    next(s)
    started, got = threading.Event(), {}

    def other():
        started.set()
        got["logits"] = model.logits(PROMPTS[1])

    t = threading.Thread(target=other, daemon=True)
    t.start()
    assert started.wait(DEADLINE_S)
    for _ in s:
        pass
    assert s.completion.tokens == want_tokens
    t.join(DEADLINE_S)
    assert not t.is_alive(), "logits() never got the lock back from the finished stream"
    np.testing.assert_array_equal(got["logits"], want_logits)

    dropped = model.stream(PROMPTS[2], max_tokens=8, temperature=0, ignore_eos=True)
    next(dropped)
    del dropped   # CPython finalizes the generator now: its finally releases the lock
    result = run_concurrently([lambda: model.logits(PROMPTS[1])])
    np.testing.assert_array_equal(result[0], want_logits)


def test_thread_pool_shared_by_callers(tmp_path):
    """ThreadPool::run from several threads on one pool (tests/cpp/thread_pool_check.cpp): each
    call runs each share exactly once. It assumed one caller and hung or mixed up jobs; a pool
    belongs to one backend today, so this is the pool's own guarantee, not the engine's lock."""
    import shutil
    import subprocess
    from pathlib import Path
    cxx = shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("needs a C++ compiler")
    root = Path(__file__).resolve().parent.parent
    src = root / "src" / "cpp"
    exe = tmp_path / "thread_pool_check"
    subprocess.run([cxx, "-std=c++17", "-O2", "-pthread", f"-I{src}", str(root / "tests" / "cpp" / "thread_pool_check.cpp"),
                    str(src / "backends" / "cpu" / "thread_pool.cpp"), "-o", str(exe)], check=True, timeout=DEADLINE_S)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=DEADLINE_S)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
