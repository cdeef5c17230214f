"""forgert's GGUF reader on hand-built bytes (every malformation) and against the gguf package."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from forgert import ModelFormatError
from forgert.gguf import GGUFFile

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
        U64: "<Q", I64: "<q", F64: "<d"}


def gstr(s) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gval(vtype, v, sub=None) -> bytes:
    if vtype == STR:
        return gstr(v)
    if vtype == ARR:
        sub_type, items = sub, v
        inner = sub_type[0] if isinstance(sub_type, tuple) else sub_type
        out = struct.pack("<IQ", inner, len(items))
        return out + b"".join(gval(inner, x, sub_type[1] if isinstance(sub_type, tuple) else None) for x in items)
    return struct.pack(_FMT[vtype], v)


def build(kvs=(), tensors=(), *, magic=b"GGUF", version=3, n_kv=None, n_tensors=None, alignment=32,
          data_pad=0):
    """kvs: [(key, vtype, value, subtype)]; tensors: [(name, ne, type_id, payload bytes)] laid out
    back to back at aligned offsets. Returns (file bytes, {name: absolute data offset})."""
    head = magic + struct.pack("<I", version)
    head += struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors,
                        len(kvs) if n_kv is None else n_kv)
    body = b"".join(gstr(k) + struct.pack("<I", t) + gval(t, v, sub) for k, t, v, sub in kvs)
    infos, offsets, off = b"", [], 0
    for name, ne, type_id, payload in tensors:
        infos += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        infos += struct.pack("<IQ", type_id, off)
        offsets.append(off)
        off += -(-len(payload) // alignment) * alignment
    meta = head + body + infos
    data_start = -(-len(meta) // alignment) * alignment
    data = bytearray()
    for (name, ne, type_id, payload), o in zip(tensors, offsets):
        data += b"\0" * (o - len(data)) + payload
    blob = meta + b"\0" * (data_start - len(meta)) + bytes(data) + b"\0" * data_pad
    return blob, {t[0]: data_start + o for t, o in zip(tensors, offsets)}


def write(tmp_path, blob, name="model.gguf"):
    p = tmp_path / name
    p.write_bytes(blob)
    return p


F32_PAYLOAD = np.arange(12, dtype="<f4").tobytes()            # ne (4, 3)
Q8_PAYLOAD = bytes(range(34)) * 2                             # ne (32, 2) of Q8_0


def valid_kvs():
    return [
        ("general.architecture", STR, "llama", None),
        ("a.u8", U8, 200, None), ("a.i8", I8, -5, None), ("a.u16", U16, 60000, None),
        ("a.i16", I16, -30000, None), ("a.u32", U32, 4_000_000_000, None), ("a.i32", I32, -7, None),
        ("a.f32", F32, 1.5, None), ("a.bool", BOOL, True, None), ("a.u64", U64, 2**40, None),
        ("a.i64", I64, -(2**40), None), ("a.f64", F64, 0.25, None), ("a.str", STR, "héllo ✓", None),
        ("a.arr_i32", ARR, [1, -2, 3], I32), ("a.arr_str", ARR, ["x", "", "zé"], STR),
        ("a.arr_nested", ARR, [[1, 2], [3]], (ARR, U8)), ("a.arr_empty", ARR, [], F32),
    ]


def test_valid_file_metadata_and_tensors(tmp_path):
    blob, offs = build(valid_kvs(), [("w.f32", (4, 3), 0, F32_PAYLOAD), ("w.q8", (32, 2), 8, Q8_PAYLOAD)])
    g = GGUFFile(write(tmp_path, blob))
    m = g.metadata
    assert g.version == 3 and g.alignment == 32
    assert m["general.architecture"] == "llama"
    assert (m["a.u8"], m["a.i8"], m["a.u16"], m["a.i16"]) == (200, -5, 60000, -30000)
    assert (m["a.u32"], m["a.i32"], m["a.u64"], m["a.i64"]) == (4_000_000_000, -7, 2**40, -(2**40))
    assert m["a.f32"] == 1.5 and m["a.f64"] == 0.25 and m["a.bool"] is True
    assert m["a.str"] == "héllo ✓"
    assert m["a.arr_i32"].tolist() == [1, -2, 3]
    assert m["a.arr_str"] == ["x", "", "zé"]
    assert [a.tolist() for a in m["a.arr_nested"]] == [[1, 2], [3]]
    assert len(m["a.arr_empty"]) == 0
    assert g.metadata_types["a.arr_i32"] == (ARR, I32) and g.metadata_types["a.f32"] == F32

    t = g.tensors["w.f32"]
    assert t.shape == (3, 4) and t.type_name == "F32" and t.offset == offs["w.f32"] and t.nbytes == 48
    view = g.tensor_data("w.f32")
    assert view.dtype == np.uint8 and not view.flags.owndata       # a matrix: zero-copy view of the mapping
    np.testing.assert_array_equal(view.view("<f4").reshape(3, 4), np.arange(12).reshape(3, 4))
    q = g.tensors["w.q8"]
    assert q.shape == (2, 32) and q.nbytes == 68 and q.offset % 32 == 0
    assert bytes(g.tensor_data("w.q8")) == Q8_PAYLOAD
    assert g.data_offset % 32 == 0


def test_custom_alignment(tmp_path):
    kvs = [("general.alignment", U32, 64, None)]
    blob, offs = build(kvs, [("a", (4, 3), 0, F32_PAYLOAD), ("b", (4, 3), 0, F32_PAYLOAD)], alignment=64)
    g = GGUFFile(write(tmp_path, blob))
    assert g.alignment == 64 and g.data_offset % 64 == 0
    assert g.tensors["b"].offset == offs["b"] and (offs["b"] - g.data_offset) == 64


def test_version_2_is_read(tmp_path):
    blob, _ = build([("k", U32, 1, None)], [("a", (4, 3), 0, F32_PAYLOAD)], version=2)
    assert GGUFFile(write(tmp_path, blob)).version == 2


def test_matches_gguf_package_on_default_model(smollm2_gguf):
    gguf = pytest.importorskip("gguf")
    ref = gguf.GGUFReader(str(smollm2_gguf))
    g = GGUFFile(smollm2_gguf)
    assert len(g.tensors) == len(ref.tensors)
    for rt in ref.tensors:
        t = g.tensors[rt.name]
        assert t.type_id == int(rt.tensor_type)
        assert list(t.ne) == [int(d) for d in rt.shape]
        assert t.offset == int(rt.data_offset)
        assert t.nbytes == int(rt.n_bytes)
    for key, field in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        v = field.contents()
        mine = g.metadata[key]
        if isinstance(mine, np.ndarray):
            np.testing.assert_array_equal(mine, np.asarray(v))
        elif isinstance(mine, float):
            assert mine == pytest.approx(v)
        else:
            assert mine == v, key


# ------------------------------------------------------------------------------ malformations

def expect_error(tmp_path, blob, *fragments):
    p = write(tmp_path, blob)
    with pytest.raises(ModelFormatError) as e:
        GGUFFile(p)
    msg = str(e.value)
    assert msg.startswith("model.gguf: "), msg
    for f in fragments:
        assert f in msg, msg
    return msg


def test_empty_file(tmp_path):
    expect_error(tmp_path, b"", "empty")


def test_bad_magic(tmp_path):
    blob, _ = build(magic=b"GGML")
    expect_error(tmp_path, blob, "not a GGUF file")


@pytest.mark.parametrize("version", [1, 4, 0xFFFF])
def test_unsupported_version(tmp_path, version):
    blob, _ = build(version=version)
    expect_error(tmp_path, blob, "version", str(version))


def test_big_endian(tmp_path):
    blob = b"GGUF" + struct.pack(">I", 3) + struct.pack(">QQ", 0, 0)
    expect_error(tmp_path, blob, "big-endian")


@pytest.mark.parametrize("cut", [3, 6, 12, 20])
def test_truncated_header(tmp_path, cut):
    blob, _ = build([("k", U32, 1, None)])
    expect_error(tmp_path, blob[:cut], "truncated" if cut >= 4 else "magic")


def test_absurd_counts(tmp_path):
    blob, _ = build(n_tensors=2**62)
    expect_error(tmp_path, blob, "absurd tensor count")
    blob, _ = build(n_kv=2**40)
    expect_error(tmp_path, blob, "absurd metadata count")


def test_string_longer_than_file(tmp_path):
    blob = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**50) + b"key"
    expect_error(tmp_path, blob, "metadata key #0", "claims")


def test_array_longer_than_file(tmp_path):
    blob = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + gstr("big") + struct.pack("<I", ARR)
            + struct.pack("<IQ", U32, 2**40) + b"\0" * 16)
    expect_error(tmp_path, blob, "metadata 'big'", "claims")


def test_unknown_value_type(tmp_path):
    blob = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + gstr("k") + struct.pack("<I", 99) + b"\0" * 8
    expect_error(tmp_path, blob, "'k'", "unknown value type 99")


def test_duplicate_key(tmp_path):
    blob, _ = build([("k", U32, 1, None), ("k", U32, 2, None)])
    expect_error(tmp_path, blob, "'k' appears twice")


def test_invalid_utf8_string(tmp_path):
    blob, _ = build([("k", STR, b"\xff\xfe", None)])
    expect_error(tmp_path, blob, "UTF-8")


@pytest.mark.parametrize("align", [0, 3, 48])
def test_bad_alignment(tmp_path, align):
    blob, _ = build([("general.alignment", U32, align, None)])
    expect_error(tmp_path, blob, "general.alignment")


@pytest.mark.parametrize("ne", [(), (1, 1, 1, 1, 1)])
def test_bad_dimension_count(tmp_path, ne):
    blob, _ = build([], [("t", ne, 0, b"\0" * 4)])
    expect_error(tmp_path, blob, "tensor 't'", "dimensions")


def test_zero_dimension(tmp_path):
    blob, _ = build([], [("t", (4, 0), 0, b"")])
    expect_error(tmp_path, blob, "tensor 't'", "zero dimension")


def test_absurd_dimension(tmp_path):
    blob, _ = build([], [("t", (4, 2**60), 0, F32_PAYLOAD)])
    expect_error(tmp_path, blob, "tensor 't'", "absurd dimensions")


def test_unknown_tensor_type(tmp_path):
    blob, _ = build([], [("t", (4, 3), 99, F32_PAYLOAD)])
    expect_error(tmp_path, blob, "tensor 't'", "unknown ggml type id 99")


def test_columns_not_multiple_of_block(tmp_path):
    blob, _ = build([], [("t", (16, 2), 8, b"\0" * 68)])
    expect_error(tmp_path, blob, "tensor 't'", "Q8_0", "16 columns", "block size 32")


def test_misaligned_offset(tmp_path):
    blob, _ = build([], [("t", (4, 3), 0, F32_PAYLOAD)])
    # patch the tensor's offset field (the last 8 bytes of the info) to 4
    info_end = blob.index(b"\0" * 8, blob.index(b"t") + 1 + 4 + 16 + 4)
    patched = blob[:info_end] + struct.pack("<Q", 4) + blob[info_end + 8:]
    expect_error(tmp_path, patched, "tensor 't'", "not a multiple of the alignment")


def test_truncated_tensor_data(tmp_path):
    blob, offs = build([], [("blk.3.ffn_up.weight", (4, 3), 0, F32_PAYLOAD)])
    cut = blob[:offs["blk.3.ffn_up.weight"] + 20]
    start = offs["blk.3.ffn_up.weight"]
    msg = expect_error(tmp_path, cut, "truncated")
    assert f"tensor 'blk.3.ffn_up.weight' needs bytes {start}..{start + 48} but the file has {len(cut)}" in msg


def test_duplicate_tensor(tmp_path):
    blob, _ = build([], [("t", (4, 3), 0, F32_PAYLOAD), ("t", (4, 3), 0, F32_PAYLOAD)])
    expect_error(tmp_path, blob, "tensor 't' appears twice")


def test_overlapping_tensors(tmp_path):
    """A tensor whose offset points into another's bytes is refused (it loaded, reading the other
    tensor's weights as its own)."""
    blob, _ = build([], [("a", (4, 3), 0, F32_PAYLOAD), ("b", (4, 3), 0, F32_PAYLOAD)])
    at = blob.index(gstr("b")) + len(gstr("b")) + 4 + 16 + 4     # b's n_dims, ne, type, then offset
    assert struct.unpack_from("<Q", blob, at) == (64,)
    patched = blob[:at] + struct.pack("<Q", 32) + blob[at + 8:]
    expect_error(tmp_path, patched, "tensors 'a' and 'b' overlap")


def test_truncated_real_model(tmp_path, smollm2_gguf):
    data = smollm2_gguf.read_bytes()
    for cut in (100, 1_000_000, len(data) // 2, len(data) - 1):
        p = tmp_path / "model.gguf"
        p.write_bytes(data[:cut])
        with pytest.raises(ModelFormatError, match="truncated"):
            GGUFFile(p)
