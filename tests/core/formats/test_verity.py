"""dm-verity hash device: byte-for-byte against ``veritysetup format``, and the verifier."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from sysextant.core.formats import verity

VERITYSETUP = shutil.which("veritysetup")
needs_veritysetup = pytest.mark.skipif(VERITYSETUP is None, reason="veritysetup (cryptsetup-bin) not installed")

SALT, UUID = verity.derive_salt_uuid(b"test seed")


def _data(nbytes: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(nbytes)


def _reference(tmp: Path, data: bytes) -> tuple[bytes, str, str]:
    """(hash device bytes, root hash hex, dump text) from the real veritysetup."""
    d, h = tmp / "data", tmp / "hash"
    d.write_bytes(data)
    h.unlink(missing_ok=True)
    run = subprocess.run([VERITYSETUP, "format", f"--salt={SALT.hex()}", f"--uuid={uuid.UUID(bytes=UUID)}",
                          "--hash=sha256", "--data-block-size=4096", "--hash-block-size=4096", str(d), str(h)],
                         capture_output=True, text=True, check=True)
    root = re.search(r"Root hash:\s+([0-9a-f]{64})", run.stdout).group(1)
    return h.read_bytes(), root, run.stdout


def test_derive_salt_uuid_is_deterministic_and_distinct() -> None:
    assert verity.derive_salt_uuid(b"a") == verity.derive_salt_uuid(b"a")
    salt, uid = verity.derive_salt_uuid(b"a")
    assert len(salt) == 32 and len(uid) == 16 and salt[:16] != uid
    assert verity.derive_salt_uuid(b"b")[0] != salt
    assert uuid.UUID(bytes=uid).version == 4


@pytest.mark.parametrize("blocks", [1, 2, 127, 128, 129, 128 * 128 + 1, 300])
@pytest.mark.parametrize("tail", [0, 1000])
@needs_veritysetup
def test_byte_identical_to_veritysetup(tmp_path: Path, blocks: int, tail: int) -> None:
    data = _data(blocks * 4096 + tail, blocks)
    ref, root, _ = _reference(tmp_path, data)
    out = io.BytesIO(b"X" * 7)
    out.seek(7)  # the hash device starts at the stream's current position
    res = verity.hash_tree(io.BytesIO(b"pad" + data), 3, len(data), out, salt=SALT, uuid=UUID)
    assert out.getvalue()[:7] == b"X" * 7
    assert out.getvalue()[7:] == ref
    assert out.tell() == 7 + len(ref)
    assert res.root_hash.hex() == root
    assert res.hash_size == len(ref) and res.data_blocks == blocks
    assert verity.verify_tree(io.BytesIO(data), 0, blocks * 4096, io.BytesIO(ref), 0, res.root_hash) == []


@needs_veritysetup
def test_veritysetup_verify_and_dump_accept_our_hash_device(tmp_path: Path) -> None:
    data = _data(200 * 4096, 7)
    (tmp_path / "d").write_bytes(data)
    with open(tmp_path / "h", "wb") as h:
        res = verity.hash_tree(io.BytesIO(data), 0, len(data), h, salt=SALT, uuid=UUID)
    subprocess.run([VERITYSETUP, "verify", str(tmp_path / "d"), str(tmp_path / "h"), res.root_hash.hex()],
                   check=True, capture_output=True)
    dump = subprocess.run([VERITYSETUP, "dump", str(tmp_path / "h")], check=True, capture_output=True,
                          text=True).stdout
    assert re.search(r"UUID:\s+" + str(uuid.UUID(bytes=UUID)), dump)
    assert re.search(r"Data blocks:\s+200\b", dump)
    assert re.search(r"Salt:\s+" + SALT.hex(), dump)
    assert re.search(r"Hash algorithm:\s+sha256", dump)
    bad = bytearray(data)
    bad[4096 * 150 + 5] ^= 1
    (tmp_path / "d").write_bytes(bad)
    run = subprocess.run([VERITYSETUP, "verify", str(tmp_path / "d"), str(tmp_path / "h"), res.root_hash.hex()],
                         capture_output=True)
    assert run.returncode != 0


def test_zero_blocks_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one full"):
        verity.hash_tree(io.BytesIO(b"x" * 100), 0, 100, io.BytesIO(), salt=SALT, uuid=UUID)


def test_superblock_round_trip() -> None:
    sb = verity.parse_superblock(verity.superblock(data_blocks=42, salt=SALT, uuid=UUID))
    assert (sb.version, sb.hash_type, sb.algorithm, sb.data_blocks) == (1, 1, "sha256", 42)
    assert (sb.salt, sb.uuid, sb.data_block_size, sb.hash_block_size) == (SALT, UUID, 4096, 4096)


@pytest.mark.parametrize("where", ["data", "level0", "level1", "superblock-salt", "padding"])
def test_verify_tree_names_corruption(where: str) -> None:
    blocks = 128 * 3 + 5  # two levels
    data = bytearray(_data(blocks * 4096, 3))
    out = io.BytesIO()
    res = verity.hash_tree(io.BytesIO(bytes(data)), 0, len(data), out, salt=SALT, uuid=UUID)
    hashdev = bytearray(out.getvalue())
    starts, sizes, _ = verity.tree_layout(blocks)
    if where == "data":
        data[4096 * 200] ^= 0x80
    elif where == "level0":
        hashdev[starts[0] * 4096 + 32 * 130] ^= 1
    elif where == "level1":
        hashdev[starts[1] * 4096 + 3] ^= 1
    elif where == "superblock-salt":
        hashdev[0x58] ^= 1
    elif where == "padding":  # the zero padding after the last digest of level 0
        hashdev[(starts[0] + sizes[0]) * 4096 - 1] = 1
    problems = verity.verify_tree(io.BytesIO(bytes(data)), 0, len(data), io.BytesIO(bytes(hashdev)), 0,
                                  res.root_hash)
    assert problems, where
    if where in ("level0", "padding"):
        assert any("level 0" in p for p in problems)
    if where == "level1":
        assert any("level 1" in p for p in problems)
    if where in ("data", "superblock-salt"):
        assert any("root hash" in p for p in problems)


def test_verify_tree_wrong_root_and_garbage() -> None:
    data = _data(3 * 4096)
    out = io.BytesIO()
    res = verity.hash_tree(io.BytesIO(data), 0, len(data), out, salt=SALT, uuid=UUID)
    assert verity.verify_tree(io.BytesIO(data), 0, len(data), io.BytesIO(out.getvalue()), 0, bytes(32))
    assert verity.verify_tree(io.BytesIO(data), 0, len(data), io.BytesIO(b"\0" * 4096), 0, res.root_hash) == [
        "no verity superblock (signature is not 'verity')"]
    short = verity.verify_tree(io.BytesIO(data[:4096]), 0, 4096, io.BytesIO(out.getvalue()), 0, res.root_hash)
    assert short and "only 4096 bytes" in short[0]


def test_progress_reports_bytes() -> None:
    from sysextant.core.progress import Reporter

    events = []
    data = _data(3 * (verity.CHUNK // 4096) * 4096 // 2)
    verity.hash_tree(io.BytesIO(data), 0, len(data), io.BytesIO(), salt=SALT, uuid=UUID,
                     reporter=Reporter(events.append), task="t")
    assert [e.done for e in events] == [verity.CHUNK, len(data)]
    assert all(e.task == "t" and e.total == len(data) for e in events)


def test_one_file_object_for_data_and_hash_over_several_chunks() -> None:
    """verify.py passes the same DDI file object as data and hash device; chunks must re-seek."""
    blocks = 2 * (verity.CHUNK // 4096) + 129
    data = _data(blocks * 4096, 11)
    image = io.BytesIO(data)
    image.seek(len(data))
    res = verity.hash_tree(image, 0, len(data), image, salt=SALT, uuid=UUID)
    separate = io.BytesIO()
    assert verity.hash_tree(io.BytesIO(data), 0, len(data), separate, salt=SALT, uuid=UUID) == res
    assert image.getvalue()[len(data):] == separate.getvalue()
    assert verity.verify_tree(image, 0, len(data), image, len(data), res.root_hash) == []
    raw = bytearray(image.getvalue())
    raw[verity.CHUNK + 4096 * 3] ^= 1  # in the second chunk
    bad = io.BytesIO(bytes(raw))
    problems = verity.verify_tree(bad, 0, len(data), bad, len(data), res.root_hash)
    assert any("level 0 hash block" in p for p in problems)


def _pseudo_random(nbytes: int, seed: int) -> bytes:
    """Cheap distinct blocks for big inputs: one random MiB, each 4 KiB block stamped with its number."""
    piece = bytearray(random.Random(seed).randbytes(1 << 20))
    out = bytearray()
    while len(out) < nbytes:
        for off in range(0, len(piece), 4096):
            piece[off:off + 8] = (len(out) + off).to_bytes(8, "little")
        out += piece
    return bytes(out[:nbytes])


@needs_veritysetup
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_many_spans_on_real_files_byte_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 workers: int) -> None:
    """Level 0 cut into many spans and partial batches, hashed here and by helper processes."""
    monkeypatch.setattr(verity, "CHUNK", 4 * 128 * 4096)  # 4 hash blocks of level 0 per span
    monkeypatch.setattr(verity, "BATCH", 100)  # batches that do not divide a span
    by_helpers = []
    take = verity._Spans.take

    def spy(self: verity._Spans) -> int | None:
        first = take(self)
        if first is not None and threading.current_thread().name == "verity-helper":
            by_helpers.append(first)
        return first

    monkeypatch.setattr(verity._Spans, "take", spy)
    blocks = 128 * 4 * 40 + 77  # 41 spans, the last one partial; not a multiple of the fan-out
    data = _pseudo_random(blocks * 4096 + 123, 5)
    ref, root, _ = _reference(tmp_path, data)
    with open(tmp_path / "data", "rb") as d, open(tmp_path / "ours", "wb") as h:
        res = verity.hash_tree(d, 0, len(data), h, salt=SALT, uuid=UUID, workers=workers)
    assert (tmp_path / "ours").read_bytes() == ref
    assert res.root_hash.hex() == root
    assert bool(by_helpers) == (workers > 1)


def test_helper_process_answers_like_this_process(tmp_path: Path) -> None:
    """The helper script, driven by hand: same digests as in process, and a short read fails it."""
    from sysextant.core.formats import _verity_hasher as kernel

    data = _data(300 * 4096, 23)
    (tmp_path / "d").write_bytes(data)
    fd = os.open(tmp_path / "d", os.O_RDONLY)
    try:
        proc = subprocess.Popen([sys.executable, "-I", "-S", kernel.__file__, str(fd), SALT.hex(), "64"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(fd,))
        reply, err = proc.communicate(b"4096 200\n0 1\n1224704 2\n", timeout=60)
        assert reply[:1] == kernel.READY
        reply = reply[1:]
        here = kernel.Scratch(SALT, 7)
        assert reply == here.from_fd(fd, 4096, 200) + here.from_fd(fd, 0, 1)
        assert reply[:32] == hashlib.sha256(SALT + data[4096:8192]).digest()
        assert proc.returncode != 0 and b"ShortRead" in err  # 1224704 + 2 blocks is past the end
        with pytest.raises(kernel.ShortRead) as exc:
            here.from_fd(fd, 1224704, 2)
        assert exc.value.args == (len(data),)
    finally:
        os.close(fd)


@pytest.mark.parametrize("failure", ["exits", "no-python"])
def test_failing_helpers_leave_the_work_to_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        failure: str) -> None:
    """A helper that dies (or cannot start) costs speed, never bytes."""
    monkeypatch.setattr(verity, "CHUNK", 128 * 4096)
    data = _data(128 * 30 * 4096 + 5 * 4096, 29)
    (tmp_path / "d").write_bytes(data)
    if failure == "exits":
        real = subprocess.Popen
        monkeypatch.setattr(verity.subprocess, "Popen",
                            lambda argv, **kw: real([sys.executable, "-c", "import sys; sys.exit(3)"], **kw))
    else:
        monkeypatch.setattr(verity.sys, "executable", str(tmp_path / "no-such-python"))
    expect = io.BytesIO()
    res = verity.hash_tree(io.BytesIO(data), 0, len(data), expect, salt=SALT, uuid=UUID)
    out = io.BytesIO()
    with open(tmp_path / "d", "rb") as d:
        assert verity.hash_tree(d, 0, len(data), out, salt=SALT, uuid=UUID, workers=3) == res
    assert out.getvalue() == expect.getvalue()


@needs_veritysetup
def test_three_levels_over_several_chunks(tmp_path: Path) -> None:
    """A three-level tree (more than 128 * 128 data blocks) over several default-sized spans,
    hashed through a file descriptor by two threads and through a file object by one."""
    blocks = 128 * 128 + 3 * (verity.CHUNK // 4096) + 300  # 3 levels, not a multiple of 128
    data = _pseudo_random(blocks * 4096, 9)
    ref, root, _ = _reference(tmp_path, data)
    assert len(verity.tree_layout(blocks)[0]) == 3
    with open(tmp_path / "data", "rb") as d, open(tmp_path / "ours", "wb") as h:
        res = verity.hash_tree(d, 0, len(data), h, salt=SALT, uuid=UUID, workers=2)
    assert (tmp_path / "ours").read_bytes() == ref
    assert res.root_hash.hex() == root
    out = io.BytesIO()
    assert verity.hash_tree(io.BytesIO(data), 0, len(data), out, salt=SALT, uuid=UUID, workers=1) == res
    assert out.getvalue() == ref


def test_same_buffered_file_with_pending_writes(tmp_path: Path) -> None:
    """Like ddi.assemble: data written through the same buffered file just before hashing must be
    seen by the descriptor reads (flushed first), and the tree lands after it."""
    data = _data(700 * 4096, 13)
    with open(tmp_path / "img", "w+b", buffering=1 << 20) as fh:
        for k in range(0, len(data), 1000):  # small writes: the tail sits in the buffer
            fh.write(data[k:k + 1000])
        res = verity.hash_tree(fh, 0, len(data), fh, salt=SALT, uuid=UUID, workers=2)
        assert fh.tell() == len(data) + res.hash_size
    expect = io.BytesIO()
    assert verity.hash_tree(io.BytesIO(data), 0, len(data), expect, salt=SALT, uuid=UUID) == res
    assert (tmp_path / "img").read_bytes() == data + expect.getvalue()


def test_wrapped_stream_is_read_through_the_object(tmp_path: Path) -> None:
    """A GzipFile has a fileno (the compressed file's): the tree must cover what it delivers."""
    import gzip

    data = _data(300 * 4096, 17)
    with gzip.open(tmp_path / "d.gz", "wb") as g:
        g.write(data)
    expect = verity.hash_tree(io.BytesIO(data), 0, len(data), io.BytesIO(), salt=SALT, uuid=UUID)
    with gzip.open(tmp_path / "d.gz", "rb") as g:
        assert verity.hash_tree(g, 0, len(data), io.BytesIO(), salt=SALT, uuid=UUID) == expect


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("kind", ["file", "object"])
def test_data_shorter_than_promised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int,
                                    kind: str) -> None:
    monkeypatch.setattr(verity, "CHUNK", 128 * 4096)
    data = _data(9 * 128 * 4096 + 4096 * 3 + 50, 19)  # enough spans for helpers (workers=2)
    (tmp_path / "d").write_bytes(data)
    with open(tmp_path / "d", "rb") as f:
        src = f if kind == "file" else io.BytesIO(f.read())
        with pytest.raises(ValueError, match=f"data ends at byte {len(data)}, expected"):
            verity.hash_tree(src, 0, len(data) + 2 * 4096, io.BytesIO(), salt=SALT, uuid=UUID,
                             workers=workers)
