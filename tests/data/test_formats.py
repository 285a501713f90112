"""Record and token files: round trips, chunked writes, atomic replacement, and the errors a
truncated or corrupt file gives (they name the file, the field and the offset)."""

import os

import numpy as np
import pytest
import torch

from fasttrain.data import RecordFile, RecordFormatError, read_tokens, write_records, write_tokens


def sample_fields(n, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (n, 4, 5, 3), dtype=np.uint8),
        "label": rng.integers(-5, 1000, n).astype(np.int64),
        "x": torch.randn(n, 7, generator=torch.Generator().manual_seed(seed)),
        "flag": rng.integers(0, 2, n).astype(np.int16),
    }


def assert_fields_equal(rf, fields):
    assert set(rf.fields) == set(fields)
    for k, v in fields.items():
        want = v.numpy() if isinstance(v, torch.Tensor) else v
        assert rf.fields[k].dtype == want.dtype and np.array_equal(rf.fields[k], want), k


@pytest.mark.parametrize("n", [0, 1, 7, 4099])
def test_round_trip_arrays_and_tensors(tmp_path, n):
    fields = sample_fields(n)
    path = write_records(tmp_path / "a.ftrec", fields, chunk_records=100)
    rf = RecordFile(path)
    assert len(rf) == n and rf.kind == "records"
    assert_fields_equal(rf, fields)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_write_from_iterable_of_uneven_chunks(tmp_path):
    fields = sample_fields(1000, seed=3)
    cuts = [0, 1, 8, 300, 301, 999, 1000]
    chunks = ({k: v[a:b] for k, v in fields.items()} for a, b in zip(cuts, cuts[1:]))
    rf = RecordFile(write_records(tmp_path / "c.ftrec", chunks, chunk_records=64))
    assert_fields_equal(rf, fields)


@pytest.mark.parametrize("dtype,top", [(np.uint16, 65535), (np.uint32, 1 << 20)])
def test_tokens_round_trip(tmp_path, dtype, top):
    toks = np.random.default_rng(0).integers(0, top, 4099).astype(np.int64)
    toks[0] = top  # the largest value decides the automatic dtype
    t = read_tokens(write_tokens(tmp_path / "t.fttok", toks))
    assert t.dtype == dtype and t.ndim == 1 and np.array_equal(t, toks)
    chunks = (toks[i : i + 1000].astype(dtype) for i in range(0, 4099, 1000))
    assert np.array_equal(read_tokens(write_tokens(tmp_path / "t2.fttok", chunks)), toks)


def test_tokens_errors(tmp_path):
    with pytest.raises(ValueError, match="1-D"):
        write_tokens(tmp_path / "t", np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match=r"\[0, 65535\]"):
        write_tokens(tmp_path / "t", np.array([70000]), dtype=np.uint16)
    write_records(tmp_path / "r", {"a": np.arange(3)})
    with pytest.raises(RecordFormatError, match="not a token file"):
        read_tokens(tmp_path / "r")


@pytest.fixture
def good_file(tmp_path):
    return write_records(tmp_path / "g.ftrec", sample_fields(500), chunk_records=64)


def test_truncated_file_names_file_field_and_offset(good_file):
    data = good_file.read_bytes()
    rf = RecordFile(good_file)
    # Cut inside record 10, inside the bytes of field "label" (offset 60 in the record).
    label_off = next(f["offset"] for f in rf.schema["fields"] if f["name"] == "label")
    data_off = rf._data_off
    cut = data_off + 10 * rf.record_bytes + label_off + 3
    good_file.write_bytes(data[:cut])
    with pytest.raises(RecordFormatError, match=rf"{good_file.name}: truncated at offset {cut}, in field 'label' of record 10"):
        RecordFile(good_file)
    for cut, what in ((30, "header needs 64"), (70, "inside the schema"), (len(data) - 2, "checksum table")):
        good_file.write_bytes(data[:cut])
        with pytest.raises(RecordFormatError, match=what):
            RecordFile(good_file)


def test_flipped_byte_names_field_and_offset(good_file):
    rf = RecordFile(good_file)
    img_off = next(f["offset"] for f in rf.schema["fields"] if f["name"] == "x")
    pos = rf._data_off + 200 * rf.record_bytes + img_off + 1  # record 200 is in chunk 3 (records 192..255)
    data = bytearray(good_file.read_bytes())
    data[pos] ^= 0x10
    good_file.write_bytes(bytes(data))
    with pytest.raises(RecordFormatError, match=r"checksum mismatch in field 'x', records 192\.\.255 \(bytes \d+"):
        RecordFile(good_file)
    RecordFile(good_file, verify=False)  # opening without verification is allowed (and documented)


def test_flipped_header_byte_and_bad_magic(good_file):
    data = bytearray(good_file.read_bytes())
    data[70] ^= 1  # inside the schema JSON
    good_file.write_bytes(bytes(data))
    with pytest.raises(RecordFormatError, match="header checksum mismatch"):
        RecordFile(good_file)
    data[0:8] = b"NOTMAGIC"
    good_file.write_bytes(bytes(data))
    with pytest.raises(RecordFormatError, match="not a fasttrain record file"):
        RecordFile(good_file)


def test_chunk_schema_mismatch_and_atomicity(tmp_path):
    path = tmp_path / "keep.ftrec"
    write_records(path, {"a": np.arange(4)})
    before = path.read_bytes()

    def chunks():
        yield {"a": np.arange(4)}
        yield {"b": np.arange(4)}

    with pytest.raises(ValueError, match=r"chunk 1 has fields \['b'\]"):
        write_records(path, chunks())
    with pytest.raises(ValueError, match=r"field 'a' is int32 \(2,\), expected int64 \(\) per record"):
        write_records(path, [{"a": np.arange(4)}, {"a": np.zeros((1, 2), np.int32)}])
    with pytest.raises(ValueError, match="'b' has 3 records"):
        write_records(path, {"a": np.arange(4), "b": np.arange(3)})
    # A failed write leaves the previous file intact and no temporary file behind.
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.ftrec"]
