"""LLTokenizer's eos_token across llguidance releases: 1.7+ takes every stop id; older ones
(1.3 is the newest with a Python 3.9 wheel) take one id: the model's EOS where it is a stop id
(the output still completes the document; it ends with that token rather than another stop). The server tests
(test_server_openai_features.py, test_server_adversarial.py, ...) run the real thing on whichever
llguidance is installed: 1.3.0 on Python 3.9, 1.9.1 on 3.11-3.13 when this was written."""
from __future__ import annotations

import pytest

pytest.importorskip("llguidance")
from forgert import grammar


@pytest.fixture
def llguidance_version(monkeypatch):
    def use(version):
        monkeypatch.setattr(grammar, "_llguidance_version", lambda: version)
    return use


def test_installed_version_reads_as_numbers():
    version = grammar._llguidance_version()
    assert len(version) == 2 and all(isinstance(p, int) for p in version)


@pytest.mark.parametrize("version", [(1, 3), (1, 9)])
def test_no_stop_ids_is_none(llguidance_version, version):
    llguidance_version(version)
    assert grammar._eos_argument([]) is None


def test_new_llguidance_gets_every_stop_id(llguidance_version):
    llguidance_version((1, 7))
    assert grammar._eos_argument([2, 7]) == [2, 7]


def test_old_llguidance_gets_the_one_stop_id(llguidance_version):
    llguidance_version((1, 3))
    assert grammar._eos_argument([2]) == 2


def test_old_llguidance_with_several_stop_ids_gets_the_eos(llguidance_version):
    llguidance_version((1, 3))
    assert grammar._eos_argument([0, 2], eos_id=2) == 2
    assert grammar._eos_argument([0, 2], eos_id=None) == 0
    llguidance_version((1, 9))
    assert grammar._eos_argument([0, 2], eos_id=2) == [0, 2]
