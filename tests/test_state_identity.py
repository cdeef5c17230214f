"""A saved state (Model.save_state) loads only into the model that saved it: another model of the
same shapes would take its K/V silently and continue wrongly. References: two tiny random models
of identical shapes and different seeds (each other's foreign model), the same file loaded twice,
and the same weights written to a second file (the identity is content-based: accepted)."""
from __future__ import annotations

import dataclasses
import pickle
import shutil

import pytest

from forgert.prompt_cache import ModelState


@pytest.fixture(scope="module")
def twins(tiny_models, tiny_tokenizer, tmp_path_factory):
    """(a GGUF, another GGUF of the same spec and shapes but another seed's weights)."""
    import model_factory as mf
    a = tiny_models("llama_tied")
    spec = dataclasses.replace(a.spec, seed=a.spec.seed + 1000)
    b = mf.make_tiny_model(spec, tmp_path_factory.mktemp("twin"), tiny_tokenizer, hf_dtypes=(),
                           gguf_types=("Q8_0",))
    return a.path("gguf-Q8_0"), b.gguf_files["Q8_0"]


def saved(forgert, path, n_ctx=64):
    m = forgert.Model(str(path), backend="cpu", n_ctx=n_ctx)
    m.generate(list(range(3, 20)), max_tokens=1, temperature=0)
    return m, m.save_state()


def test_state_of_another_model_of_the_same_shapes_refused(forgert, twins):
    a, b = twins
    _, state = saved(forgert, a)
    other = forgert.Model(str(b), backend="cpu", n_ctx=64)
    assert other._engine.kv_save(0).shape[:2] == state.kv.shape[:2]   # the K/V would fit
    with pytest.raises(ValueError, match="this state was saved by another model: .*identity [0-9a-f]{16}.*not this one"):
        other.load_state(state)


def test_same_file_loaded_again_accepts_it(forgert, twins):
    a, _ = twins
    m, state = saved(forgert, a)
    again = forgert.Model(str(a), backend="cpu", n_ctx=64)
    again.load_state(state)
    nxt = list(state.tokens) + [7]
    assert again.generate(nxt, max_tokens=3, temperature=0).tokens == m.generate(nxt, max_tokens=3, temperature=0).tokens


def test_same_weights_in_another_file_accept_it(forgert, twins, tmp_path):
    """The identity is of the content, not the path: a copy of the file is the same model."""
    a, _ = twins
    _, state = saved(forgert, a)
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(a, copy)
    forgert.Model(str(copy), backend="cpu", n_ctx=64).load_state(state)


def test_pickled_state_round_trips_and_an_old_one_is_refused(forgert, twins):
    a, _ = twins
    m, state = saved(forgert, a)
    m.load_state(pickle.loads(pickle.dumps(state)))
    # a state pickled before states carried an identity unpickles without one (its __dict__
    # restored as it was): refused by name, as is a state made by hand
    old = ModelState.__new__(ModelState)
    old.__dict__.update({k: v for k, v in state.__dict__.items() if k != "model"})
    for bare in (old, ModelState(state.tokens, state.kv)):
        with pytest.raises(ValueError, match="this state carries no model identity"):
            m.load_state(bare)
