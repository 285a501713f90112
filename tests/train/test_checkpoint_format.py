"""The checkpoint codec (FTCKPT03): exact round trips for every dtype/shape the states hold, fallbacks
for non-dense tensors, old FTCKPT01 files still load, corruption is caught."""

import hashlib
import io
import random

import numpy as np
import pytest
import torch

from fasttrain.train import CheckpointError, load_checkpoint, save_checkpoint
from fasttrain.train import _serial
from fasttrain.train.checkpoint import _MAGIC_V1


def state():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    return {
        "f32": torch.randn(7, generator=g), "bf16": torch.randn(4099, generator=g).bfloat16(),
        "f16": torch.randn(3, 1, 5, generator=g).half(), "i64": torch.arange(5), "bool": torch.tensor([True, False]),
        "u8": torch.randint(0, 255, (13,), dtype=torch.uint8, generator=g), "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4), "noncontig": base.t(), "param": torch.nn.Parameter(torch.ones(3)),
        "sparse": torch.eye(3).to_sparse(), "nested": [{"a": (torch.zeros(2), 1)}, "x"],
        "rng": (random.getstate(), np.random.get_state(), torch.get_rng_state()), "step": 12,
    }


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape and a.layout == b.layout
        assert torch.equal(a.to_dense() if a.is_sparse else a, b.to_dense() if b.is_sparse else b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b)
    else:
        assert a == b


def test_round_trip_is_exact_and_writable(tmp_path):
    s = state()
    save_checkpoint(tmp_path / "s.ckpt", s)
    back = load_checkpoint(tmp_path / "s.ckpt")
    assert_same(s, back)
    for k in ("f32", "bf16", "i64"):  # own storage, like torch.load's tensors
        assert back[k].untyped_storage().nbytes() == back[k].numel() * back[k].element_size()
    torch.set_rng_state(back["rng"][2])  # consumers that read the storage from offset 0


def test_codec_aligns_and_rejects_short_payload():
    blob = _serial.dumps({"x": torch.arange(3.0)})
    assert torch.equal(_serial.loads(blob)["x"], torch.arange(3.0))
    with pytest.raises(ValueError, match="shorter"):
        _serial.loads((10**6).to_bytes(8, "little"))


def test_v1_files_still_load(tmp_path):
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf, _use_new_zipfile_serialization=False)
    payload = buf.getvalue()
    (tmp_path / "v1.ckpt").write_bytes(_MAGIC_V1 + hashlib.sha256(payload).digest() + payload)
    assert torch.equal(load_checkpoint(tmp_path / "v1.ckpt")["w"], torch.ones(2))


def test_flipped_tensor_byte_is_detected(tmp_path):
    path = save_checkpoint(tmp_path / "c.ckpt", {"w": torch.zeros(1000)})
    blob = bytearray(path.read_bytes())
    blob[-100] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="CRC-32C mismatch"):
        load_checkpoint(path)


def test_v2_files_still_load_and_are_verified(tmp_path):
    """FTCKPT02 (SHA-256 header, same payload codec) from fasttrain <= 0.8."""
    payload = _serial.dumps({"w": torch.arange(5.0)})
    path = tmp_path / "v2.ckpt"
    path.write_bytes(b"FTCKPT02" + hashlib.sha256(payload).digest() + payload)
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(5.0))
    path.write_bytes(b"FTCKPT02" + hashlib.sha256(payload).digest() + payload[:-1] + bytes([payload[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        load_checkpoint(path)


def test_crc32c_matches_the_standard_check_value():
    from fasttrain._ext import _C

    assert _C.crc32c([b"123456789"]) == 0xE3069283  # RFC 3720 / iSCSI check value
    assert _C.crc32c([b"12345", memoryview(b"6789")]) == 0xE3069283  # spans concatenate
    assert _C.crc32c([b"6789"], _C.crc32c([b"12345"])) == 0xE3069283  # and continue


def test_file_writers_take_address_spans():
    """(data_ptr, nbytes, owner) tuples read the same bytes as the buffer they describe."""
    from fasttrain._ext import _C

    t = torch.arange(5000, dtype=torch.float32)
    assert _C.crc32c([(t.data_ptr(), t.nbytes, t), b"x"]) == _C.crc32c([t.numpy(), b"x"])
    with pytest.raises(ValueError, match="two integers"):
        _C.crc32c([(t.data_ptr(),)])


def test_truncated_payload_is_detected_by_length(tmp_path):
    path = save_checkpoint(tmp_path / "c.ckpt", {"w": torch.zeros(1000)})
    path.write_bytes(path.read_bytes()[:-64])
    with pytest.raises(CheckpointError, match="truncated or padded"):
        load_checkpoint(path)


def test_staged_checkpoint_is_invisible_until_committed(tmp_path):
    from fasttrain.train.checkpoint import commit_checkpoint, stage_checkpoint

    staged = stage_checkpoint(tmp_path / "new" / "s.ckpt", {"w": torch.ones(3)})  # creates the directory
    assert not (tmp_path / "new" / "s.ckpt").exists()
    commit_checkpoint(staged)
    assert torch.equal(load_checkpoint(tmp_path / "new" / "s.ckpt")["w"], torch.ones(3))
    tmp_path = tmp_path / "new"
    dropped = stage_checkpoint(tmp_path / "t.ckpt", {"w": torch.ones(3)})
    dropped.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.ckpt"]


def test_durable_write_errors_name_the_file_and_leave_no_temp(tmp_path):
    from fasttrain.train.checkpoint import atomic_write_bytes

    atomic_write_bytes(tmp_path / "a.bin", [b"ab", memoryview(b"cd")])
    assert (tmp_path / "a.bin").read_bytes() == b"abcd"
    (tmp_path / "d").mkdir()
    with pytest.raises(OSError, match="d"):
        atomic_write_bytes(tmp_path / "d", b"x")  # rename over a directory fails
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "d"]


def test_prune_removes_temp_files_of_dead_processes_only(tmp_path):
    import os
    import subprocess
    import sys

    from fasttrain.train.checkpoint import prune_checkpoints

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(dead.stdout)  # exited: its pid is free (reuse within this test is not a concern)
    stale = tmp_path / f".step-7.ckpt.{dead_pid}.0.tmp"
    ours = tmp_path / f".step-8.ckpt.{os.getpid()}.3.tmp"  # a write of this process, still in flight
    other = tmp_path / ".notes.txt.123.tmp"  # not a checkpoint temp file
    for p in (stale, ours, other):
        p.write_bytes(b"x")
    stale_parked = tmp_path / f".recycle.{dead_pid}.tmp"
    ours_parked = tmp_path / f".recycle.{os.getpid()}.tmp"
    for p in (stale, ours, other, stale_parked, ours_parked):
        p.write_bytes(b"x")
    prune_checkpoints(tmp_path, keep=3, recycle=True)
    assert not stale.exists() and not stale_parked.exists()
    assert ours.exists() and other.exists() and ours_parked.exists()


def _crc32c_bitwise(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 & -(c & 1))
    return c ^ 0xFFFFFFFF


@pytest.mark.parametrize("n", [1, 7, 3071, 3072, 3073, 3080, 4099, 24 * 1024 + 13])
def test_crc32c_three_chains_match_the_bitwise_definition(n):
    """Spans from 3 KiB up run three interleaved chains combined by shifting: any length, any split."""
    from fasttrain._ext import _C

    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    want = _crc32c_bitwise(data)
    assert _C.crc32c([data]) == want
    for cut in (0, 1, n // 3, n - 1):
        assert _C.crc32c([data[:cut], memoryview(data)[cut:]]) == want
    assert _C.crc32c([data[1:]], _C.crc32c([data[:1]])) == want


def test_recycled_checkpoint_file_is_overwritten_and_truncated(tmp_path):
    """prune(recycle=True) parks the newest pruned file; the next stage(recycle=True) takes it over,
    and a shorter checkpoint written into a longer old file loads exactly (no stale tail)."""
    from fasttrain.train.checkpoint import commit_checkpoint, prune_checkpoints, recycle_path, stage_checkpoint

    for step, n in ((1, 50_000), (2, 60_000), (3, 10)):
        commit_checkpoint(stage_checkpoint(tmp_path / f"step-{step}.ckpt", {"w": torch.full((n,), float(step))}))
    prune_checkpoints(tmp_path, keep=1, recycle=True)
    parked = recycle_path(tmp_path)
    assert parked.stat().st_size > 200_000  # step-2 (the newest pruned; step-1 was replaced by it)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([parked.name, "step-3.ckpt"])
    staged = stage_checkpoint(tmp_path / "step-4.ckpt", {"w": torch.arange(7.0)}, recycle=True)
    assert not parked.exists()  # claimed
    commit_checkpoint(staged, prune_keep=1, recycle=True)
    assert torch.equal(load_checkpoint(tmp_path / "step-4.ckpt")["w"], torch.arange(7.0))
    assert (tmp_path / "step-4.ckpt").stat().st_size < 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([parked.name, "step-4.ckpt"])  # step-3 parked
    stage_checkpoint(tmp_path / "step-5.ckpt", {"w": torch.ones(3)}, recycle=True).discard(recycle=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([parked.name, "step-4.ckpt"])  # parked again
    prune_checkpoints(tmp_path, keep=1)  # the end of a run: the parked file goes too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-4.ckpt"]
