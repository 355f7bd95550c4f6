"""UKI assembly with the real Debian stub and a real kernel, checked with sbverify, osslsigncode
and objdump; size prediction to the byte; refusals; determinism; memory use."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kernel import real_kernel
from signing_helpers import make_signer, sbverify, tool

from sysextant.core.errors import UserError
from sysextant.core.formats.authenticode import sign_pe, signature_length, verify_authenticode
from sysextant.core.formats.pe import parse_pe, pe_checksum, round_up
from sysextant.core.formats.uki import build_uki, merge_sbat, predict_size, read_uname
from sysextant.core.keys import Signer

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
pytestmark = pytest.mark.skipif(not STUB.is_file(), reason=f"{STUB} missing (Debian package systemd-boot-efi)")
OSREL = b'NAME="Kairos"\nID=kairos\nVERSION_ID=3.2\n'
CMDLINE = b"console=ttyS0 rd.immucore.uki selinux=0"


needs_sbverify = tool("sbverify", "sbsigntool")
needs_osslsigncode = tool("osslsigncode", "osslsigncode")
needs_objdump = tool("objdump", "binutils")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("uki")


@pytest.fixture(scope="module")
def signer(work: Path) -> Signer:
    return make_signer(work, "db")


@pytest.fixture(scope="module")
def kernel() -> Path:
    return real_kernel()


def initrd_of(work: Path, length: int) -> Path:
    path = work / f"initrd-{length}"
    if not path.exists():
        path.write_bytes(os.urandom(length))
    return path


def sections_for(kernel: Path, initrd: Path) -> list[tuple[str, Path | bytes]]:
    # deliberately not in ukify order: build_uki orders them
    return [(".linux", kernel), (".initrd", initrd), (".osrel", OSREL), (".cmdline", CMDLINE),
            (".uname", (read_uname(kernel) or "unknown").encode())]


@pytest.fixture(scope="module")
def initrd(work: Path) -> Path:
    return initrd_of(work, 3 * 1024 * 1024 + 17)


@pytest.fixture(scope="module")
def signed_uki(work: Path, kernel: Path, initrd: Path, signer: Signer):
    return build_uki(STUB, sections_for(kernel, initrd), work / "signed.efi", signer=signer)


@pytest.fixture(scope="module")
def unsigned_uki(work: Path, kernel: Path, initrd: Path):
    return build_uki(STUB, sections_for(kernel, initrd), work / "unsigned.efi", signer=None)


def ossl(path: Path, cert: Path) -> bool:
    res = subprocess.run(["osslsigncode", "verify", "-CAfile", str(cert), "-in", str(path)],
                         capture_output=True, text=True)
    return res.returncode == 0 and "Signature verification: ok" in res.stdout


def test_read_uname(kernel: Path) -> None:
    uname = read_uname(kernel)
    assert uname and re.fullmatch(r"\d+\.\d+\S*", uname)
    if "vmlinuz-" in kernel.name:
        assert uname == kernel.name.removeprefix("vmlinuz-")


def test_result_describes_the_file(unsigned_uki, kernel: Path, initrd: Path) -> None:
    path = unsigned_uki.path
    assert unsigned_uki.size == path.stat().st_size
    import hashlib
    assert unsigned_uki.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [n for n, _, _ in unsigned_uki.sections] == [".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
    data = path.read_bytes()
    expect = {".osrel": OSREL, ".cmdline": CMDLINE, ".initrd": initrd.read_bytes(), ".linux": kernel.read_bytes()}
    for name, offset, size in unsigned_uki.sections:
        assert offset % 0x200 == 0
        if name in expect:
            assert data[offset:offset + size] == expect[name], name
    assert not unsigned_uki.signed and parse_pe(path).security == (0, 0)


def test_headers_are_consistent(signed_uki) -> None:
    pe = parse_pe(signed_uki.path)
    stub = parse_pe(STUB)
    assert [s.name for s in pe.sections[:len(stub.sections)]] == [s.name for s in stub.sections]
    new = pe.sections[len(stub.sections):]
    prev = stub.sections[-1]
    for s in new:
        assert s.raw_offset % pe.file_alignment == 0 and s.raw_size % pe.file_alignment == 0
        assert s.virtual_address == round_up(prev.virtual_address + prev.virtual_size, pe.section_alignment)
        assert s.raw_size == round_up(s.virtual_size, pe.file_alignment)
        prev = s
    assert pe.size_of_image == round_up(prev.virtual_address + prev.virtual_size, pe.section_alignment)
    assert pe.symtab_offset == 0 and pe.symbol_count == 0
    with open(signed_uki.path, "rb") as fh:
        assert pe.checksum == pe_checksum(fh, pe) != 0


@needs_objdump
def test_objdump_reads_the_sections(signed_uki) -> None:
    out = subprocess.run(["objdump", "-h", str(signed_uki.path)], capture_output=True, text=True, check=True).stdout
    rows = re.findall(r"^\s*\d+\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\S+\n\s+(.*)$", out, re.M)
    by_name = {n: (int(size, 16), int(off, 16), flags) for n, size, _vma, off, flags in rows}
    for name, offset, size in signed_uki.sections:
        assert by_name[name][:2] == (size, offset), name
    assert "CODE" in by_name[".linux"][2] and "READONLY" in by_name[".linux"][2]
    assert "DATA" in by_name[".initrd"][2] and "READONLY" in by_name[".initrd"][2]
    names = [r[0] for r in rows]
    assert names[-5:] == [".osrel", ".cmdline", ".uname", ".initrd", ".linux"]


@needs_sbverify
@needs_osslsigncode
def test_signed_uki_verifies(signed_uki, signer: Signer) -> None:
    assert signed_uki.signed
    assert sbverify(signed_uki.path, signer.cert_path)
    assert ossl(signed_uki.path, signer.cert_path)
    assert verify_authenticode(signed_uki.path, signer.cert_path) == []


@needs_sbverify
@needs_osslsigncode
def test_unsigned_uki_signed_by_sbsign_verifies(unsigned_uki, signer: Signer, work: Path) -> None:
    """The unsigned UKI is a well-formed PE for the reference signer too."""
    if shutil.which("sbsign") is None:
        pytest.skip("sbsign missing")
    out = work / "sbsigned.efi"
    subprocess.run(["sbsign", "--key", str(signer.key_path), "--cert", str(signer.cert_path),
                    "--output", str(out), str(unsigned_uki.path)], check=True, capture_output=True)
    assert sbverify(out, signer.cert_path) and ossl(out, signer.cert_path)
    assert verify_authenticode(out, signer.cert_path) == []


@needs_sbverify
@needs_osslsigncode
@pytest.mark.parametrize("section", [".linux", ".initrd", ".osrel", ".cmdline"])
def test_flipped_byte_fails_verification(signed_uki, signer: Signer, tmp_path: Path, section: str) -> None:
    offset = next(off for n, off, _ in signed_uki.sections if n == section)
    data = bytearray(signed_uki.path.read_bytes())
    data[offset + 1] ^= 0x20
    bad = tmp_path / "bad.efi"
    bad.write_bytes(data)
    assert not sbverify(bad, signer.cert_path)
    assert not ossl(bad, signer.cert_path)
    assert verify_authenticode(bad, signer.cert_path)


@needs_sbverify
@needs_osslsigncode
def test_wrong_certificate_fails(signed_uki, work: Path) -> None:
    other = make_signer(work, "other")
    assert not sbverify(signed_uki.path, other.cert_path)
    assert not ossl(signed_uki.path, other.cert_path)
    assert verify_authenticode(signed_uki.path, other.cert_path)


@pytest.mark.parametrize("length", [1, 511, 512, 4096, 100_001, 1024 * 1024])
def test_predicted_size_is_exact(work: Path, kernel: Path, signer: Signer, length: int) -> None:
    initrd = initrd_of(work, length)
    secs = sections_for(kernel, initrd)
    sizes = {n: (len(c) if isinstance(c, bytes) else c.stat().st_size) for n, c in secs}
    unsigned = build_uki(STUB, secs, work / f"u-{length}.efi")
    assert unsigned.size == predict_size(STUB, sizes, signed=False)
    signed = build_uki(STUB, secs, work / f"s-{length}.efi", signer=signer)
    assert signed.size == predict_size(STUB, sizes, signed=True, signer=signer)
    assert signed.size == predict_size(STUB, sizes, signed=True, signature_len=signature_length(signer))
    assert signed.path.stat().st_size == signed.size


def test_same_inputs_same_bytes(work: Path, kernel: Path, initrd: Path, signer: Signer, signed_uki) -> None:
    again = build_uki(STUB, sections_for(kernel, initrd), work / "again.efi", signer=signer)
    assert again.sha256 == signed_uki.sha256
    assert again.path.read_bytes() == signed_uki.path.read_bytes()


def test_signing_in_place_equals_build(unsigned_uki, signed_uki, signer: Signer, tmp_path: Path) -> None:
    copy = tmp_path / "copy.efi"
    shutil.copy(unsigned_uki.path, copy)
    with open(copy, "r+b") as fh:
        sign_pe(fh, signer)
    assert copy.read_bytes() == signed_uki.path.read_bytes()


def test_sbat_is_merged_in_place(work: Path, kernel: Path, initrd: Path, unsigned_uki) -> None:
    ours = "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\nkairos,1,Kairos,kairos,1,https://kairos.io\n"
    uki = build_uki(STUB, sections_for(kernel, initrd) + [(".sbat", ours.encode())], work / "sbat.efi")
    assert uki.size == unsigned_uki.size  # replaced inside the stub's own section
    pe = parse_pe(uki.path)
    sec = pe.section(".sbat")
    text = uki.path.read_bytes()[sec.raw_offset:sec.raw_offset + sec.virtual_size].decode()
    lines = text.rstrip("\0").splitlines()
    assert lines[0].startswith("sbat,1,") and sum(ln.startswith("sbat,") for ln in lines) == 1
    assert any(ln.startswith("systemd,") for ln in lines)  # the stub's own entries stay
    assert "kairos,1,Kairos,kairos,1,https://kairos.io" in lines
    assert text.endswith("\n\0")
    assert merge_sbat("sbat,1\na,1\n", "sbat,1\na,1\nb,2\n") == b"%s\na,1\nb,2\n\0" % (
        b"sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md")


def test_signed_stub_is_refused(work: Path, kernel: Path, initrd: Path, signer: Signer) -> None:
    stub = work / "signed-stub.efi"
    shutil.copy(STUB, stub)
    with open(stub, "r+b") as fh:
        sign_pe(fh, signer)
    with pytest.raises(UserError, match="already signed; use the unsigned stub"):
        build_uki(stub, sections_for(kernel, initrd), work / "x.efi")
    assert not (work / "x.efi").exists()


def test_non_kernel_is_refused(work: Path, initrd: Path) -> None:
    fake = work / "vmlinux"
    fake.write_bytes(b"\x7fELF" + bytes(4096))
    with pytest.raises(UserError, match="is not a Linux kernel image"):
        build_uki(STUB, sections_for(fake, initrd), work / "y.efi")
    with pytest.raises(UserError, match="is not a Linux kernel image"):
        build_uki(STUB, sections_for(STUB.parent / "linuxx64.elf.stub", initrd), work / "y.efi")
    with pytest.raises(UserError, match="needs a .linux"):
        build_uki(STUB, [(".osrel", OSREL)], work / "y.efi")
    assert not (work / "y.efi").exists()


def test_too_many_sections_are_refused(work: Path, kernel: Path, initrd: Path) -> None:
    extra = [(f".x{i}", b"x") for i in range(4)]
    with pytest.raises(UserError, match=r"stub .*linuxx64.efi.stub has header room for 7 new sections but 9"):
        build_uki(STUB, sections_for(kernel, initrd) + extra, work / "z.efi")
    assert not (work / "z.efi").exists()


def test_non_pe_stub_is_refused(work: Path, kernel: Path, initrd: Path) -> None:
    with pytest.raises(UserError, match="is not a PE/EFI image"):
        build_uki(initrd, sections_for(kernel, initrd), work / "w.efi")


def test_progress_is_reported(work: Path, kernel: Path, initrd: Path, signer: Signer) -> None:
    from sysextant.core.errors import Cancelled
    from sysextant.core.progress import Reporter
    events = []
    build_uki(STUB, sections_for(kernel, initrd), work / "p.efi", signer=signer,
              reporter=Reporter(events.append), task="kairos")
    tasks = {e.task for e in events}
    assert {"kairos: write", "kairos: sign", "kairos: sha256"} <= tasks
    last = [e for e in events if e.task == "kairos: write"][-1]
    assert last.done == last.total

    reporter = Reporter(lambda e: reporter.cancel() if e.done > 4 << 20 else None)
    with pytest.raises(Cancelled):
        build_uki(STUB, sections_for(kernel, initrd), work / "c.efi", signer=signer, reporter=reporter)
    assert not (work / "c.efi").exists()
    assert not [p for p in work.iterdir() if p.name.startswith(".sysextant-tmp-")]


RSS_SCRIPT = r"""
import json, sys
from pathlib import Path
from sysextant.core.keys import load_signer
from sysextant.core.formats.uki import build_uki

def hwm():  # peak RSS of this process image (ru_maxrss would include the forking parent's peak)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

stub, kernel, initrd, out, key, cert = map(Path, sys.argv[1:7])
signer = load_signer(key, cert)
before = hwm()
res = build_uki(stub, [(".osrel", b"ID=x\n"), (".initrd", initrd), (".linux", kernel)], out, signer=signer)
print(json.dumps({"before": before, "after": hwm(), "size": res.size}))
"""


def test_peak_memory_stays_small(work: Path, kernel: Path, signer: Signer) -> None:
    big = work / "initrd-big"
    with open(big, "wb") as fh:  # 96 MiB of incompressible-ish data without holding it in memory
        block = os.urandom(1 << 20)
        for i in range(96):
            fh.write(block[i:] + block[:i])
    res = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(STUB), str(kernel), str(big),
                          str(work / "big.efi"), str(signer.key_path), str(signer.cert_path)],
                         capture_output=True, text=True, check=True)
    m = json.loads(res.stdout)
    growth = m["after"] - m["before"]
    print(f"UKI {m['size'] / 2**20:.1f} MiB, peak RSS {m['after'] / 2**20:.1f} MiB, "
          f"growth during build {growth / 2**20:.1f} MiB ({growth / m['size']:.3f}x)")
    assert m["after"] < 0.5 * m["size"]
    assert growth < 0.05 * m["size"]
    (work / "big.efi").unlink()
    big.unlink()
