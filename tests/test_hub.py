"""Models from the Hugging Face Hub: Model.from_pretrained and --model hf:REPO[/FILE].

The Hub cannot be reached from the tests, so each test lays out a huggingface_hub cache by hand
(models--ORG--NAME/{refs/main, blobs/<hash>, snapshots/<commit>/<file> -> blob}, as the library
writes it) holding tiny models, and runs forgert in a child process with HF_HUB_CACHE pointing
there and HF_HUB_OFFLINE=1: huggingface_hub's own offline code path resolves the files.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import subprocess_env

pytest.importorskip("huggingface_hub")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_repo(cache: Path, repo_id: str, files: dict) -> Path:
    """files: path in the repo -> local file to put there. Returns the snapshot folder."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / COMMIT
    (storage / "blobs").mkdir(parents=True)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(COMMIT)
    for rel, src in files.items():
        data = Path(src).read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, tiny_models):
    tm = tiny_models("llama_tied")
    cache = tmp_path / "hub"
    hf_dir = tm.path("hf-F32")
    snapshots = {
        "one": cache_repo(cache, "tiny-org/one-gguf", {"tiny-q8_0.gguf": tm.path("gguf-Q8_0"),
                                                       "README.md": hf_dir / "config.json"}),
        "two": cache_repo(cache, "tiny-org/two-ggufs", {"tiny-q8_0.gguf": tm.path("gguf-Q8_0"),
                                                        "f32/tiny-f32.gguf": tm.path("gguf-F32")}),
        "hf": cache_repo(cache, "tiny-org/checkpoint", {p.name: p for p in hf_dir.iterdir() if p.is_file()}),
    }
    return cache, snapshots, tm


def run_offline(cache, *args, code=None):
    env = subprocess_env(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    env.pop("HF_HOME", None)
    argv = [sys.executable, "-c", code] if code else [sys.executable, "-m", "forgert", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)


FROM_PRETRAINED = """
import json, sys, forgert
m = forgert.Model.from_pretrained(*sys.argv[1:], n_ctx=64)
print(json.dumps({"path": m.path, "format": m.info()["format"],
                  "text": m.generate("hello", max_tokens=4, temperature=0).text}))
"""


@pytest.mark.parametrize("repo,filename,expected", [
    ("tiny-org/one-gguf", None, "one/tiny-q8_0.gguf"),               # the repo's only GGUF
    ("tiny-org/two-ggufs", "f32/tiny-f32.gguf", "two/f32/tiny-f32.gguf"),
    ("tiny-org/checkpoint", None, "hf/"),                            # safetensors checkpoint
])
def test_from_pretrained_resolves_from_the_offline_cache(hub_cache, repo, filename, expected):
    import forgert
    cache, snapshots, tm = hub_cache
    key, _, rel = expected.partition("/")
    want = snapshots[key] / rel if rel else snapshots[key]
    code = FROM_PRETRAINED.replace("*sys.argv[1:]", repr(repo) + (f", {filename!r}" if filename else ""))
    r = run_offline(cache, code=code)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert os.path.normpath(got["path"]) == os.path.normpath(str(want))
    assert got["format"] == ("safetensors" if key == "hf" else "gguf")
    # the same model as the file the cache entry was made from
    source = tm.path("hf-F32") if key == "hf" else Path(os.path.realpath(want))
    assert got["text"] == forgert.Model(source, n_ctx=64).generate("hello", max_tokens=4, temperature=0).text


def test_cli_model_hf_uri(hub_cache):
    cache, snapshots, _ = hub_cache
    r = run_offline(cache, "info", "hf:tiny-org/two-ggufs/f32/tiny-f32.gguf", "--json")
    assert r.returncode == 0, r.stderr
    assert os.path.normpath(json.loads(r.stdout)["path"]) == os.path.normpath(str(snapshots["two"] / "f32/tiny-f32.gguf"))
    r = run_offline(cache, "run", "hello", "--raw", "-m", "hf:tiny-org/one-gguf", "-n", "2", "--n-ctx", "64")
    assert r.returncode == 0, r.stderr
    assert "decode:" in r.stderr


def test_several_ggufs_are_listed_for_the_user_to_pick(hub_cache):
    cache, _, _ = hub_cache
    r = run_offline(cache, "run", "hello", "-m", "hf:tiny-org/two-ggufs")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "tiny-org/two-ggufs has 2 GGUF models" in r.stderr
    assert "f32/tiny-f32.gguf" in r.stderr and "tiny-q8_0.gguf" in r.stderr


@pytest.mark.parametrize("uri,words", [
    ("hf:tiny-org/not-cached", ["cannot get hf:tiny-org/not-cached", "HF_HUB_OFFLINE"]),
    ("hf:tiny-org/one-gguf/missing.gguf", ["cannot get hf:tiny-org/one-gguf/missing.gguf", "HF_HUB_OFFLINE"]),
    ("hf:just-a-name", ["expected hf:ORG/NAME"]),
])
def test_hub_errors_are_one_clear_line(hub_cache, uri, words):
    cache, _, _ = hub_cache
    r = run_offline(cache, "run", "hello", "-m", uri)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


@pytest.fixture
def split_hub_cache(tmp_path, tiny_models):
    """Repositories holding a GGUF split in shards (gguf_split.py), alone and beside a one-file GGUF."""
    from model_factory import write_gguf
    tm = tiny_models("llama_tied")
    (tmp_path / "w").mkdir()
    first = write_gguf(tm.model, tm.spec, tm.tokenizer, tmp_path / "w" / "tiny-q8_0.gguf", "Q8_0", split_max_tensors=8)
    shards = sorted(first.parent.glob("tiny-q8_0-*-of-*.gguf"))
    assert len(shards) >= 2
    cache = tmp_path / "hub"
    split = {f"q8/{p.name}": p for p in shards}
    snapshots = {"split": cache_repo(cache, "tiny-org/split-gguf", split),
                 "mixed": cache_repo(cache, "tiny-org/split-and-one", {**split, "tiny-f32.gguf": tm.path("gguf-F32")})}
    return cache, snapshots, [p.name for p in shards], tm


@pytest.mark.parametrize("which", ["repo", "first", "last"])
def test_a_split_gguf_downloads_every_shard(split_hub_cache, which):
    import forgert
    cache, snapshots, names, tm = split_hub_cache
    uri = {"repo": "hf:tiny-org/split-gguf", "first": f"hf:tiny-org/split-gguf/q8/{names[0]}",
           "last": f"hf:tiny-org/split-gguf/q8/{names[-1]}"}[which]
    r = run_offline(cache, "info", uri, "--json")
    assert r.returncode == 0, r.stderr
    files = json.loads(r.stdout)["files"]
    assert [os.path.normpath(f) for f in files] == [os.path.normpath(str(snapshots["split"] / "q8" / n)) for n in names]
    if which != "repo":
        return
    code = FROM_PRETRAINED.replace("*sys.argv[1:]", repr("tiny-org/split-gguf"))
    r = run_offline(cache, code=code)
    assert r.returncode == 0, r.stderr
    want = forgert.Model(tm.path("gguf-Q8_0"), n_ctx=64).generate("hello", max_tokens=4, temperature=0).text
    assert json.loads(r.stdout)["text"] == want


def test_a_split_is_listed_as_one_model(split_hub_cache):
    cache, _, names, _ = split_hub_cache
    r = run_offline(cache, "run", "hello", "-m", "hf:tiny-org/split-and-one")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "tiny-org/split-and-one has 2 GGUF models" in r.stderr
    assert f"q8/{names[0]} (and the other {len(names) - 1} shards of its split)" in r.stderr
    assert "tiny-f32.gguf" in r.stderr and names[1] not in r.stderr


def test_no_network_is_one_clear_error(monkeypatch):
    """Without a network the Hub client raises its HTTP library's own error (httpx2.ConnectError
    for huggingface_hub 1.x: neither an OSError nor from a module named 'httpx'): download() turns
    it into a HubError naming the model and the cause, not a traceback from inside the library."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError
    from forgert import hub
    httpx2 = pytest.importorskip("httpx2")

    def no_network(*args, **kwargs):
        raise httpx2.ConnectError("[Errno -2] Name or service not known")

    def not_cached(*args, **kwargs):
        raise LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", no_network)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_cached)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(hub.HubError, match=r"cannot get hf:org/name from the Hugging Face Hub: \[Errno -2\] Name or"):
        hub.download("org/name")
    with pytest.raises(hub.HubError, match=r"cannot get hf:org/name/f\.gguf from the Hugging Face Hub: \[Errno -2\]"):
        hub.download("org/name", "f.gguf")
    # a programming error inside is not dressed up as the Hub's
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        hub.download("org/name")
