"""GPT writer and reader, against sfdisk and against damage."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sysextant.core.formats import gpt

SFDISK = shutil.which("sfdisk")
DISK_GUID = uuid.UUID("11111111-2222-4333-8444-555555555555")


def _image(sizes=(8192, 4096, 16384)) -> tuple[bytes, list[gpt.Partition]]:
    spans, disk = gpt.plan(list(sizes))
    types = gpt.ROOT_TYPES["arm64"]
    parts = [gpt.Partition(types[i % 3], uuid.UUID(int=i + 1), a, b, f"part-{i}-é", gpt.ATTR_READ_ONLY)
             for i, (a, b) in enumerate(spans)]
    out = io.BytesIO()
    gpt.write_gpt(out, disk, parts, DISK_GUID)
    out.truncate(disk)
    return out.getvalue(), parts


def test_plan_aligns_and_leaves_room_for_the_backup() -> None:
    spans, disk = gpt.plan([5000, 4096, 1])
    assert spans == [(2048, 2063), (2064, 2071), (2072, 2079)]
    assert disk % 4096 == 0 and disk // 512 >= 2080 + 33
    with pytest.raises(ValueError):
        gpt.plan([0])


def test_round_trip() -> None:
    raw, parts = _image()
    t = gpt.read_gpt(io.BytesIO(raw))
    assert t.problems == []
    assert t.disk_guid == DISK_GUID
    assert [(p.type_guid, p.part_guid, p.first_lba, p.last_lba, p.name, p.attributes) for p in t.partitions] == \
        [(p.type_guid, p.part_guid, p.first_lba, p.last_lba, p.name, p.attributes) for p in parts]
    assert raw[510:512] == b"\x55\xaa" and raw[512:520] == b"EFI PART"
    assert raw[-512:-504] == b"EFI PART"


@pytest.mark.skipif(SFDISK is None, reason="sfdisk (fdisk) not installed")
def test_sfdisk_accepts_and_agrees(tmp_path: Path) -> None:
    raw, parts = _image()
    img = tmp_path / "disk.raw"
    img.write_bytes(raw)
    run = subprocess.run([SFDISK, "--verify", str(img)], capture_output=True, text=True)
    assert run.returncode == 0 and "No errors detected" in run.stdout, run.stdout + run.stderr
    table = json.loads(subprocess.run([SFDISK, "--json", str(img)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    assert table["label"] == "gpt" and table["id"].lower() == str(DISK_GUID)
    for p, q in zip(parts, table["partitions"], strict=True):
        assert q["type"].lower() == str(p.type_guid)
        assert q["uuid"].lower() == str(p.part_guid)
        assert q["name"] == p.name
        assert q["start"] == p.first_lba and q["size"] == p.last_lba - p.first_lba + 1
        assert q["attrs"] == "GUID:60"


def test_damaged_primary_falls_back_to_backup() -> None:
    raw = bytearray(_image()[0])
    raw[512 + 40] ^= 1  # inside the primary header (first usable LBA)
    t = gpt.read_gpt(io.BytesIO(bytes(raw)))
    assert any("primary GPT header CRC32" in p for p in t.problems)
    assert len(t.partitions) == 3  # from the backup


def test_damaged_entry_array_and_backup_are_named() -> None:
    raw = bytearray(_image()[0])
    raw[1024 + 60] ^= 1  # primary entry array (a name byte)
    t = gpt.read_gpt(io.BytesIO(bytes(raw)))
    assert any("primary GPT entry array CRC32" in p for p in t.problems)
    raw = bytearray(_image()[0])
    raw[-512 + 20] ^= 1  # backup header
    t = gpt.read_gpt(io.BytesIO(bytes(raw)))
    assert any("backup GPT header CRC32" in p for p in t.problems)
    assert len(t.partitions) == 3


def test_mbr_and_truncation() -> None:
    raw = bytearray(_image()[0])
    raw[510] = 0
    assert any("0x55AA" in p for p in gpt.read_gpt(io.BytesIO(bytes(raw))).problems)
    cut = bytes(_image()[0][:-4096])
    t = gpt.read_gpt(io.BytesIO(cut))
    assert any("backup" in p for p in t.problems)
    assert gpt.read_gpt(io.BytesIO(b"tiny")).problems


def test_write_refuses_out_of_range_and_long_names() -> None:
    with pytest.raises(ValueError):
        gpt.write_gpt(io.BytesIO(), 1 << 20, [gpt.Partition(uuid.uuid4(), uuid.uuid4(), 2048, 4096, "x")],
                      DISK_GUID)
    with pytest.raises(ValueError):
        gpt.write_gpt(io.BytesIO(), 4 << 20, [gpt.Partition(uuid.uuid4(), uuid.uuid4(), 2048, 2055, "x" * 37)],
                      DISK_GUID)


def test_type_table_matches_the_spec() -> None:
    # The three values domain.md and the Discoverable Partitions Specification give for x86-64.
    assert [str(u) for u in gpt.ROOT_TYPES["x86-64"]] == [
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5",
        "41092b05-9fc8-4523-994f-2def0408b176"]
    assert [str(u) for u in gpt.ROOT_TYPES["arm64"]] == [
        "b921b045-1df0-41c3-af44-4c6f280d3fae", "df3300ce-d69f-4c92-978c-9bfb0f38d820",
        "6db69de6-29f4-4758-a7a5-962190f00ce3"]
    every = [u for t in gpt.ROOT_TYPES.values() for u in t]
    assert len(set(every)) == len(every)


@pytest.mark.skipif(shutil.which("systemd-id128") is None, reason="systemd-id128 not installed")
def test_type_table_matches_systemd() -> None:
    out = subprocess.run(["systemd-id128", "show"], capture_output=True, text=True).stdout
    known = dict(line.split()[:2] for line in out.splitlines() if line.startswith("root-"))
    for arch, types in gpt.ROOT_TYPES.items():
        for suffix, u in zip(("", "-verity", "-verity-sig"), types, strict=True):
            name = f"root-{arch}{suffix}"
            if name in known:
                assert uuid.UUID(known[name]) == u, name


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40 * 512 - 1), st.integers(0, 255)), max_size=12),
       st.integers(0, 3))
def test_reader_never_crashes_on_damage(flips: list[tuple[int, int]], cut: int) -> None:
    raw = bytearray(_image((4096,))[0])
    for pos, val in flips:
        raw[pos] = val
    if cut:
        raw = raw[: len(raw) - cut * 4096]
    t = gpt.read_gpt(io.BytesIO(bytes(raw)))
    assert isinstance(t.problems, list)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=40000))
def test_reader_never_crashes_on_garbage(blob: bytes) -> None:
    t = gpt.read_gpt(io.BytesIO(blob))
    assert t.problems
