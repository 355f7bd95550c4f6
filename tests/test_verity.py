"""dm-verity hash device: byte-for-byte against ``veritysetup format``, and the verifier."""

from __future__ import annotations

import io
import random
import re
import shutil
import subprocess
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
