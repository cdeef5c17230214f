"""lm-evaluation-harness against the server: its `local-completions` model scores a small
multiple-choice task (a local JSON file: no hub) by log-likelihood, which needs echo + prompt
logprobs; once on the single-sequence path (a one-slot Model) and once in the running batch
(parallel: lm-eval's concurrent requests prefilled and scored together, batch.py). Reference: the same task scored here with NumPy log-softmax over `Model.logits` of a
second Model, each choice's continuation tokens summed; lm-eval's per-choice log-likelihoods
and its accuracy must equal it. lm-eval tokenizes through the server (/tokenizer_info, /tokenize).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from server_harness import LiveServer, load_model

pytestmark = pytest.mark.slow

QUESTIONS = [
    ("The capital of France is", ["Paris", "London", "Berlin"], 0),
    ("The capital of Germany is", ["Madrid", "Berlin", "Rome"], 1),
    ("Water freezes at zero degrees", ["Celsius", "Kelvin"], 0),
    ("One, two, three, four,", ["seven", "five", "nine"], 1),
    ("The sun rises in the", ["west", "north", "east"], 2),
    ("Cats say", ["woof", "meow"], 1),
    ("Monday, Tuesday,", ["Wednesday", "Sunday", "Friday"], 0),
    ("The opposite of hot is", ["warm", "cold", "red"], 1),
]

# Alone: one teacher-forced pass over the same tokens as Model.logits, measured difference 0.
# Batched: the prompt's rows share passes with other prompts' rows, and the Q4_1 matmuls take
# another kernel from 16 rows per pass on (measured: a 5-row prompt's scores move by 5.4e-3
# when 11 more rows join its pass; as decode vs prefill, test_server_openai_features'
# DECODE_TOL): measured 3.6e-3 on a continuation's summed logprobs.
ALONE_TOL = 1e-4
BATCHED_TOL = 1.5e-2

TASK_YAML = """task: forgert_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module", params=[1, 4], ids=["alone", "batched"])
def model(smollm2_gguf, request):
    model = load_model(smollm2_gguf, parallel=request.param)
    if request.param > 1:
        def not_batched(*args, **kwargs):
            raise AssertionError("echo's prompt logprobs left the batch for the single-sequence path")
        model.prompt_logprobs = not_batched
    return model


@pytest.fixture(scope="module")
def reference_model(smollm2_gguf):
    return load_model(smollm2_gguf)


def reference_loglikelihood(model, context: str, continuation: str) -> float:
    """lm-eval's split: tokens of context + continuation past those of the context alone (no
    BOS: lm-eval's remote tokenizer encodes without special tokens)."""
    ctx = model.tokenize(context, add_bos=False)
    whole = model.tokenize(context + continuation, add_bos=False)
    assert whole[:len(ctx)] == ctx
    x = model.logits(whole).astype(np.float64)
    lp = x - x.max(axis=1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(axis=1, keepdims=True))
    return float(sum(lp[i - 1, whole[i]] for i in range(len(ctx), len(whole))))


def test_lm_eval_multiple_choice_matches_model_logits(model, reference_model, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                            for q, c, a in QUESTIONS))
    (tmp_path / "forgert_mc.yaml").write_text(TASK_YAML.format(data=data))

    with LiveServer(model, api_key=None) as server:
        results = lm_eval.simple_evaluate(
            model="local-completions",
            model_args={"base_url": server.base_url + "/v1/completions", "model": "smollm2-test",
                        "tokenizer_backend": "remote", "tokenized_requests": True,
                        "num_concurrent": model.parallel, "max_retries": 1},
            tasks=["forgert_mc"], task_manager=TaskManager(include_path=str(tmp_path)),
            log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
            fewshot_random_seed=0)

    samples = sorted(results["samples"]["forgert_mc"], key=lambda s: s["doc_id"])
    correct, worst = 0, 0.0
    for sample, (question, choices, answer) in zip(samples, QUESTIONS):
        expected = [reference_loglikelihood(reference_model, question, " " + c) for c in choices]
        got = [resp[0] for resp in sample["filtered_resps"]]
        worst = max([worst] + [abs(g - e) for g, e in zip(got, expected)])
        correct += int(np.argmax(expected) == answer)
    print(f"largest log-likelihood difference ({'batched' if model.parallel > 1 else 'alone'}): {worst:.3g}")
    assert worst <= (BATCHED_TOL if model.parallel > 1 else ALONE_TOL)
    assert len(samples) == len(QUESTIONS)
    assert results["results"]["forgert_mc"]["acc,none"] == pytest.approx(correct / len(QUESTIONS))
