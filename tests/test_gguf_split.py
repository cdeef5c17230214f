"""GGUF models split in shards (NAME-00001-of-00003.gguf, ...), written by the gguf package's own
writer as convert_hf_to_gguf.py --split-max-tensors writes them (an implementation independent of
forgert's reader): the split model runs exactly as the one-file model (same logits, bit for bit:
the same weights), from any shard's path, and a damaged set is refused naming the shard and what
is wrong."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import gguf
import numpy as np
import pytest

import forgert
from conftest import subprocess_env
from forgert.errors import ModelFormatError
from forgert.gguf_split import open_gguf, split_name_parts
from model_factory import write_gguf

IDS = [1, 5, 9, 17, 33, 65, 129, 200, 7, 3]


@pytest.fixture(scope="module")
def split_files(tiny_models, tmp_path_factory):
    """(one-file Q8_0 GGUF, {variant: first shard}): 'split' (5 tensors a shard), 'meta-first' (the
    first shard holds only metadata, --no-tensor-first-split)."""
    tm = tiny_models("llama_tied")
    root = tmp_path_factory.mktemp("split")
    out = {}
    for variant, small_first in (("split", False), ("meta-first", True)):
        folder = root / variant
        folder.mkdir()
        out[variant] = write_gguf(tm.model, tm.spec, tm.tokenizer, folder / "tiny-q8_0.gguf", "Q8_0",
                                  split_max_tensors=5, small_first_shard=small_first)
    return tm.path("gguf-Q8_0"), out


def shards_of(first):
    parts = split_name_parts(first.name)
    return [first.with_name(f"{parts[0]}-{i + 1:05d}-of-{parts[2]:05d}.gguf") for i in range(parts[2])]


def logits(path):
    return np.asarray(forgert.Model(str(path), backend="cpu", threads=1).logits(IDS))


@pytest.mark.parametrize("variant", ["split", "meta-first"])
def test_split_model_runs_as_the_one_file_model(split_files, variant):
    one, splits = split_files
    first = splits[variant]
    shards = shards_of(first)
    assert len(shards) >= 3 and all(p.exists() for p in shards)
    reader = gguf.GGUFReader(str(first))
    assert int(reader.fields["split.count"].parts[-1][0]) == len(shards)   # the writer's own keys
    if variant == "meta-first":
        assert len(reader.tensors) == 0
    want = logits(one)
    np.testing.assert_array_equal(logits(first), want)
    np.testing.assert_array_equal(logits(shards[-1]), want)   # any shard's path opens the whole model


def test_split_tensors_are_the_files_bytes(split_files):
    """Each tensor is its shard's bytes, as the gguf package reads them, zero-copy."""
    _, splits = split_files
    g = open_gguf(str(splits["split"]))
    try:
        n = 0
        for shard in shards_of(splits["split"]):
            for t in gguf.GGUFReader(str(shard)).tensors:
                np.testing.assert_array_equal(g.tensor_data(t.name), np.asarray(t.data).view(np.uint8).reshape(-1))
                n += 1
        assert n == len(g.tensors)
    finally:
        g.close()


def test_info_lists_the_shards(split_files):
    _, splits = split_files
    first = splits["split"]
    r = subprocess.run([sys.executable, "-m", "forgert", "info", str(first), "--json"],
                       capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["files"] == [str(p) for p in shards_of(first)]
    r = subprocess.run([sys.executable, "-m", "forgert", "info", str(first)],
                       capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert f"gguf, split in {len(shards_of(first))} files" in r.stdout


def copy_split(splits, tmp_path):
    shards = shards_of(splits["split"])
    for p in shards:
        shutil.copy(p, tmp_path / p.name)
    return [tmp_path / p.name for p in shards]


def test_missing_shard_is_named(split_files, tmp_path):
    _, splits = split_files
    shards = copy_split(splits, tmp_path)
    shards[1].unlink()
    with pytest.raises(ModelFormatError, match=f"{shards[1].name}: shard 2 of the {len(shards)} .* is missing"):
        forgert.Model(str(shards[0]), backend="cpu")


def test_renamed_shard_is_refused(split_files, tmp_path):
    _, splits = split_files
    src = shards_of(splits["split"])[0]
    renamed = tmp_path / "model.gguf"
    shutil.copy(src, renamed)
    with pytest.raises(ModelFormatError, match=r"model.gguf: .* one of \d+ shards .* cannot be found"):
        forgert.Model(str(renamed), backend="cpu")


def test_shard_in_the_wrong_place_is_refused(split_files, tmp_path):
    _, splits = split_files
    shards = copy_split(splits, tmp_path)
    shutil.copy(shards[1], shards[2])     # shard 2's bytes under shard 3's name
    with pytest.raises(ModelFormatError, match=f"{shards[2].name}: its metadata says shard 1 of {len(shards)}"):
        forgert.Model(str(shards[0]), backend="cpu")


def hand_shard(path, tensors, no, count, total):
    """A shard written by hand (the gguf package's writer, no split of its own): `tensors` are
    gguf.GGUFReader tensors copied as they are, with the split keys."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint16("split.no", no)
    w.add_uint16("split.count", count)
    w.add_int32("split.tensors.count", total)
    for t in tensors:
        data = np.asarray(t.data)
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            w.add_tensor(t.name, data)
        else:
            w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_duplicate_and_missing_tensors_are_refused(split_files, tmp_path):
    _, splits = split_files
    shards = copy_split(splits, tmp_path)
    n = len(shards)
    total = len(open_gguf(str(shards[0])).tensors)
    second = list(gguf.GGUFReader(str(shards_of(splits["split"])[1])).tensors)
    third = list(gguf.GGUFReader(str(shards_of(splits["split"])[2])).tensors)
    hand_shard(shards[1], second + third[:1], 1, n, total)    # shard 3's first tensor in shard 2 too
    with pytest.raises(ModelFormatError, match=f"{shards[2].name}: tensor '{third[0].name}' is also in "
                                               f"{shards[1].name}"):
        forgert.Model(str(shards[0]), backend="cpu")
    hand_shard(shards[1], second[1:], 1, n, total)            # shard 2 lost a tensor
    with pytest.raises(ModelFormatError, match=f"announces {total} tensors .* hold {total - 1}"):
        forgert.Model(str(shards[0]), backend="cpu")
