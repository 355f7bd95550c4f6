"""Single-byte flips of signatures: our verdict against the real tools', byte by byte.

Every byte of a signed sysext image's signature-partition PKCS#7 and of a signed UKI's
certificate table (WIN_CERTIFICATE + PKCS#7) is flipped (XOR 0x01), and ``verify --cert``'s
verdict on it must equal the oracle's. A random sample of flips in the bytes the verity tree and
the Authenticode digest cover must fail too. ``bench/flips.py`` runs the same campaigns in full
(more masks, more random flips) and prints the counts; it imports the machinery from here.

The oracles, and why these invocations:

- sysext signature: ``openssl cms -verify -binary -inform DER -content HEXFILE -CAfile CERT
  -partial_chain -purpose any -no_check_time``. Not ``-noverify -nointern`` (systemd's own
  userspace fallback): that ignores the embedded certificates, so it would pass a PKCS#7 whose
  embedded signer certificate is garbage. With ``-CAfile`` the signer must be found among the
  embedded certificates by the SignerInfo's issuer and serial (or key identifier) and be the
  given certificate or chain to it, as in the kernel's ``pkcs7_validate_trust``;
  ``-partial_chain`` makes the given certificate an anchor even when it is not self-signed (any
  key in a keyring is), ``-purpose any`` and ``-no_check_time`` because the kernel checks
  neither key usage nor dates.
- UKI certificate table: ``sbverify --cert CERT`` and ``osslsigncode verify -CAfile CERT``; both
  must accept (only osslsigncode checks the WIN_CERTIFICATE revision and the SignedData content
  type, as EDK2's ``AuthenticodeVerify`` does).
- What the tools accepted then meets the rules they do not apply (:func:`envelope_rules`),
  checked on OpenSSL's own decoding (``asn1parse``) and re-encoding: DER (OpenSSL's decoder
  takes a primitive SET or a [0] marked primitive, the kernel's does not), the versions, the
  encapsulated content type, the SignerInfo digest OID (OpenSSL's CMS matches an unknown one to
  the message digest by a workaround), the signature algorithm OID, NULL or absent algorithm
  parameters, and a SignerInfo naming its certificate byte for byte (OpenSSL compares names
  case-insensitively, the kernel's ``pkcs7_find_key`` byte for byte). Each rule names its
  source; the flip tests assert that nothing else separates the tools' verdict from ours.
- elsewhere: ``veritysetup verify`` on the image's data and hash partitions; sbverify and
  osslsigncode on the UKI.

The UKI is the real systemd stub with a small stand-in kernel: the certificate table's verdict
does not depend on the kernel's bytes, and the tools hash the whole file for every flip.
"""

from __future__ import annotations

import base64
import os
import random
import re
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from ddi_helpers import MKFS_EROFS, demo_signer, make_erofs, stage

from sysextant.core.build.verify import verify_image, verify_uki
from sysextant.core.formats import ddi, pkcs7
from sysextant.core.formats.authenticode import _hashed_ranges
from sysextant.core.formats.pe import parse_pe
from sysextant.core.formats.uki import build_uki
from sysextant.core.keys import Signer

OPENSSL = shutil.which("openssl")
SBVERIFY = shutil.which("sbverify")
OSSLSIGNCODE = shutil.which("osslsigncode")
VERITYSETUP = shutil.which("veritysetup")
STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")

#: Threads running the tools; they are separate processes, so this uses both CI cores.
WORKERS = 4


# --- outcomes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """Both verdicts on one flipped byte (``offset`` within the flipped region, ``mask`` XORed)."""

    offset: int
    mask: int
    ours: bool | None  # verify accepts; None: it raised instead of answering
    oracle: bool  # the real tools (and the rules they do not apply) accept
    tools: bool  # the tools alone accept (before the rule layer)
    ours_why: str = ""  # our first problem, when we reject
    oracle_why: str = ""  # which tool or rule rejected

    @property
    def agrees(self) -> bool:
        return self.ours == self.oracle

    def describe(self) -> str:
        ours = {True: "accept", False: f"reject ({self.ours_why})", None: f"RAISED {self.ours_why}"}[self.ours]
        oracle = "accept" if self.oracle else f"reject ({self.oracle_why})"
        return f"byte {self.offset} ^ {self.mask:#04x}: ours {ours}; oracle {oracle}"


def run_all(judge: Callable[[int, int], Outcome], jobs: Iterable[tuple[int, int]],
            workers: int = WORKERS) -> list[Outcome]:
    """``judge(offset, mask)`` for every job, the tools of several jobs running at once."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda job: judge(*job), jobs))


def _run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:160] if lines else ""


def answer(check: Callable[[], tuple[bool, str]]) -> tuple[bool | None, str]:
    """Our verdict and first reason; (None, the exception) if the check raised: a traceback is
    never an answer, so it counts as a disagreement instead of stopping the campaign."""
    try:
        return check()
    except Exception as exc:  # any exception at all is the finding
        return None, f"{type(exc).__name__}: {exc}"


def flip(data: bytes, offset: int, mask: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


# --- the rules the tools do not apply, checked on OpenSSL's own decoding -----------------------


@dataclass
class Asn1:
    """One element as ``openssl asn1parse -i`` tokenizes it."""

    offset: int
    header: int
    length: int
    constructed: bool
    kind: str  # SEQUENCE, SET, cont [ 0 ], OBJECT, INTEGER, NULL, ...
    value: str  # what follows the colon: an OID's name, an INTEGER's hex digits
    children: list[Asn1]

    def raw(self, blob: bytes) -> bytes:
        return blob[self.offset:self.offset + self.header + self.length]


_ASN1_LINE = re.compile(r"^\s*(\d+):d=(\d+)\s+hl=(\d+)\s+l=\s*(\d+)\s+(cons|prim):\s*([^:]*?)\s*(?::(.*))?$")


def asn1parse(blob: bytes) -> Asn1 | None:
    """OpenSSL's element tree of ``blob``; None if asn1parse cannot read it whole."""
    run = subprocess.run([OPENSSL, "asn1parse", "-inform", "DER", "-i"], input=blob, capture_output=True,
                         timeout=60)
    stack: list[tuple[int, Asn1]] = []
    top = None
    for line in run.stdout.decode(errors="replace").splitlines():
        m = _ASN1_LINE.match(line)
        if not m:
            return None
        offset, depth, header, length = (int(m.group(k)) for k in range(1, 5))
        kind = m.group(6).replace("[HEX DUMP]", "").strip()
        node = Asn1(offset, header, length, m.group(5) == "cons", kind, (m.group(7) or "").strip(), [])
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            stack[-1][1].children.append(node)
        elif top is None:
            top = node
        else:
            return None  # a second top-level element
        stack.append((depth, node))
    return top if run.returncode == 0 else None


def _roundtrip(kind: str, blob: bytes) -> bool:
    """Whether OpenSSL re-encodes what it decoded to the same bytes: DER in, DER out. OpenSSL's
    decoder is lenient (primitive SETs, [0] certificates marked primitive); the kernel's
    grammar-driven decoder matches every tag byte for byte, and DER has one encoding."""
    run = subprocess.run([OPENSSL, kind, "-inform", "DER", "-outform", "DER"] + (["-cmsout"] if kind == "cms" else []),
                         input=blob, capture_output=True, timeout=60)
    return run.returncode == 0 and run.stdout == blob


def envelope_rules(blob: bytes, *, authenticode: bool) -> list[str]:
    """The rules the verifying tools skip, on OpenSSL's decoding of a PKCS#7 they accepted.

    For sysext signatures they are the kernel parser's (crypto/asymmetric_keys/pkcs7_parser.c:
    pkcs7_note_signeddata_version, pkcs7_note_signerinfo_version, pkcs7_note_content,
    pkcs7_sig_note_digest_algo, pkcs7_sig_note_pkey_algo; pkcs7_find_key compares issuer and
    serial byte for byte) plus the sysext format's no-signed-attributes rule (domain.md 3). For
    Authenticode: RFC 2315 9.1/9.2 and the Authenticode PE specification (versions 1), an RSA
    signature OID, the signer named byte for byte (as the kernel's own PE verifier,
    verify_pefile.c, does through the same parser). For both: DER, and AlgorithmIdentifier
    parameters absent or NULL (RFC 5754 2, RFC 8017 A.2.4).
    """
    if not _roundtrip("pkcs7" if authenticode else "cms", blob):
        return ["DER: OpenSSL re-encodes it differently"]
    tree = asn1parse(blob)
    try:
        sd = tree.children[1].children[0].children
        algs, encap, signer = sd[1].children, sd[2].children, sd[-1].children[0].children
        certs = next((c.children for c in sd[3:-1] if c.kind == "cont [ 0 ]"), [])
        versions = (int(sd[0].value, 16), int(signer[0].value, 16))
        sid, digest = signer[1], signer[2]
        signed = signer[3] if signer[3].kind == "cont [ 0 ]" else None
        sigalg = signer[4 if signed else 3]
    except (AttributeError, IndexError, ValueError):
        return ["unexpected structure"]
    problems = []
    by_ski = sid.kind == "cont [ 0 ]"
    if authenticode and (by_ski or versions != (1, 1)):
        problems.append("Authenticode: SignedData/SignerInfo version is not 1")
    if not authenticode and versions != ((3, 3) if by_ski else (1, 1)):
        problems.append("kernel: SignedData/SignerInfo version")
    for alg in [*algs, digest, sigalg]:
        if len(alg.children) > 1 and (alg.children[1].kind, alg.children[1].length) != ("NULL", 0):
            problems.append("standard: AlgorithmIdentifier parameters are not NULL")
            break
    if sid.kind == "SEQUENCE":  # pkcs7_find_key: the certificate's own issuer and serial bytes
        named = [part.raw(blob) for part in sid.children]
        tbs_fields = [c.children[0].children for c in certs]
        tbs_fields = [f[1:] if f and f[0].kind == "cont [ 0 ]" else f for f in tbs_fields]
        if not any(len(f) > 2 and [f[2].raw(blob), f[0].raw(blob)] == named for f in tbs_fields):
            problems.append("kernel: no embedded certificate has the SignerInfo's issuer and serial bytes")
    if authenticode:
        if sigalg.children[0].value not in ("rsaEncryption", "sha256WithRSAEncryption"):
            problems.append("Authenticode: signature algorithm is not RSA")
        return problems
    if encap[0].value != "pkcs7-data":
        problems.append("kernel: content type is not id-data")
    if len(encap) > 1:
        problems.append("kernel: content embedded in a detached signature")
    if digest.children[0].value != "sha256":
        problems.append("kernel: SignerInfo digest algorithm is not SHA-256")
    if sigalg.children[0].value != "rsaEncryption":
        problems.append("kernel: signature algorithm is not rsaEncryption")
    if signed is not None:
        problems.append("sysext: signed attributes")
    return problems


# --- the signed sysext image -------------------------------------------------------------------


class ImageCase:
    """A small signed sysext DDI built with the project's builder, and the ways to judge flips."""

    def __init__(self, work: Path, signer: Signer | None = None) -> None:
        self.work = work
        fs = make_erofs(stage(work / "tree", "foo", strict0=True), work / "fs.erofs")
        self.signer = signer or demo_signer(work / "keys")
        self.image = work / "foo.sysext.raw"
        self.result = ddi.assemble(fs, self.image, arch="x86-64", signer=self.signer, seed=b"foo")
        self.raw = self.image.read_bytes()
        self.root_hash = self.result.root_hash
        self.data, self.hashes, self.sig = self.result.partitions
        obj = pkcs7.parse_signature_partition(self.raw[self.sig.offset:self.sig.offset + self.sig.size])
        self.der = base64.b64decode(obj["signature"])
        self.hash_file = work / "roothash.txt"
        self.hash_file.write_text(self.root_hash)  # the signed content: 64 hex digits, no newline

    # our verdict on a flipped PKCS#7: the signature check of `verify --cert`
    def ours_signature(self, blob: bytes) -> list[str]:
        part = pkcs7.signature_json(self.root_hash, self.signer.fingerprint, blob)
        return pkcs7.check_signature(part, self.root_hash, self.signer.cert)

    def oracle_signature(self, blob: bytes, name: str) -> tuple[bool, bool, str]:
        """(oracle accepts, openssl alone accepts, why not) for a PKCS#7 DER."""
        path = self.work / f"{name}.p7s"
        path.write_bytes(blob)
        try:
            run = _run(OPENSSL, "cms", "-verify", "-binary", "-inform", "DER", "-in", path,
                       "-content", self.hash_file, "-CAfile", self.signer.cert_path, "-partial_chain",
                       "-purpose", "any", "-no_check_time", "-out", os.devnull)
            if run.returncode != 0:
                return False, False, f"openssl cms: {_last_line(run.stderr)}"
            broken = envelope_rules(blob, authenticode=False)
            return not broken, True, "; ".join(broken)
        finally:
            path.unlink()

    def judge_signature(self, offset: int, mask: int) -> Outcome:
        blob = flip(self.der, offset, mask)

        def ours() -> tuple[bool, str]:
            problems = self.ours_signature(blob)
            return not problems, problems[0] if problems else ""

        ok, ours_why = answer(ours)
        oracle, tools, why = self.oracle_signature(blob, f"sig-{offset}-{mask}")
        return Outcome(offset, mask, ok, oracle, tools, ours_why, why)

    # flips elsewhere: the bytes the verity tree covers (the data partition, the hash blocks)
    def covered(self) -> list[tuple[int, int]]:
        return [(self.data.offset, self.data.offset + self.data.size),
                (self.hashes.offset + 4096, self.hashes.offset + self.hashes.size)]

    def judge_elsewhere(self, offset: int, mask: int) -> Outcome:
        name = self.work / f"else-{offset}-{mask}"
        name.mkdir()
        try:
            image = name / "foo.sysext.raw"  # the name the extension-release file is for
            raw = flip(self.raw, offset, mask)
            image.write_bytes(raw)

            def ours() -> tuple[bool, str]:
                report = verify_image(image, self.signer.cert_path)
                failed = report.failed()
                return report.ok, (f"{failed[0].name}: {failed[0].detail}" if failed else "")

            ok, ours_why = answer(ours)
            (name / "data").write_bytes(raw[self.data.offset:self.data.offset + self.data.size])
            (name / "hash").write_bytes(raw[self.hashes.offset:self.hashes.offset + self.hashes.size])
            run = _run(VERITYSETUP, "verify", name / "data", name / "hash", self.root_hash)
            why = "" if run.returncode == 0 else f"veritysetup: {_last_line(run.stderr)}"
            return Outcome(offset, mask, ok, run.returncode == 0, run.returncode == 0, ours_why, why)
        finally:
            shutil.rmtree(name)


# --- the signed UKI ------------------------------------------------------------------------------


def stand_in_kernel(path: Path, size: int = 64 << 10) -> Path:
    """A bzImage-shaped stand-in (MZ, the "HdrS" boot header, no version string) of ``size`` bytes."""
    blob = bytearray(random.Random(1).randbytes(size))
    blob[:2] = b"MZ"
    blob[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", blob, 0x20E, 0)
    path.write_bytes(bytes(blob))
    return path


class UkiCase:
    """A signed UKI (real stub, ``kernel`` or a stand-in) and the ways to judge flips in it."""

    def __init__(self, work: Path, signer: Signer | None = None, kernel: Path | None = None) -> None:
        self.work = work
        self.signer = signer or demo_signer(work / "keys")
        kernel = kernel or stand_in_kernel(work / "vmlinuz")
        self.path = work / "uki.efi"
        sections = [(".osrel", b"ID=kairos\nVERSION_ID=3\n"), (".cmdline", b"console=ttyS0 quiet"),
                    (".initrd", random.Random(2).randbytes(20000)), (".linux", kernel)]
        build_uki(STUB, sections, self.path, signer=self.signer)
        self.raw = self.path.read_bytes()
        self.pe = parse_pe(self.path)
        self.table_offset, self.table_size = self.pe.security

    def ours(self, path: Path) -> tuple[bool, str]:
        failed = verify_uki(path, self.signer.cert_path).failed()
        return not failed, (f"{failed[0].name}: {failed[0].detail}" if failed else "")

    def oracle(self, path: Path, *, every_tool: bool) -> tuple[bool, bool, str]:
        """(oracle accepts, the tools alone accept, why not). Without ``every_tool`` osslsigncode
        runs only when sbverify accepted (the oracle is their conjunction)."""
        why = []
        if _run(SBVERIFY, "--cert", self.signer.cert_path, path).returncode != 0:
            why.append("sbverify")
        if every_tool or not why:
            run = _run(OSSLSIGNCODE, "verify", "-CAfile", self.signer.cert_path, "-in", path)
            if run.returncode != 0 or "Signature verification: ok" not in run.stdout:
                why.append("osslsigncode")
        if why:
            return False, False, " and ".join(why) + " reject"
        # both accept: the PKCS#7 where data directory 4 says, as long as its WIN_CERTIFICATE says
        raw = path.read_bytes()
        offset = struct.unpack_from("<I", raw, self.pe.security_dir_offset)[0]
        length = struct.unpack_from("<I", raw, offset)[0]
        broken = envelope_rules(raw[offset + 8:offset + length], authenticode=True)
        return not broken, True, "; ".join(broken)

    def judge(self, offset: int, mask: int, *, every_tool: bool = False) -> Outcome:
        path = self.work / f"flip-{offset}-{mask}.efi"
        path.write_bytes(flip(self.raw, offset, mask))
        try:
            ours, ours_why = answer(lambda: self.ours(path))
            oracle, tools, why = self.oracle(path, every_tool=every_tool)
        finally:
            path.unlink()
        return Outcome(offset, mask, ours, oracle, tools, ours_why, why)

    def judge_table(self, offset: int, mask: int, *, every_tool: bool = False) -> Outcome:
        """A flip at ``offset`` within the certificate table."""
        out = self.judge(self.table_offset + offset, mask, every_tool=every_tool)
        return Outcome(offset, mask, out.ours, out.oracle, out.tools, out.ours_why, out.oracle_why)

    def covered(self) -> list[tuple[int, int]]:
        """The bytes the Authenticode digest covers (all but CheckSum, the certificate-table
        entry and the table itself)."""
        return _hashed_ranges(self.pe, self.table_offset)


def sample(ranges: list[tuple[int, int]], n: int, seed: int) -> list[int]:
    """``n`` distinct offsets drawn uniformly from the union of ``ranges``."""
    rng = random.Random(seed)
    total = sum(b - a for a, b in ranges)
    picks = sorted(rng.sample(range(total), min(n, total)))
    out = []
    for k in picks:
        for a, b in ranges:
            if k < b - a:
                out.append(a + k)
                break
            k -= b - a
    return out


# --- the tests ---------------------------------------------------------------------------------


def _needs(*tools: tuple[str | None, str]):
    missing = [name for path, name in tools if path is None]
    return pytest.mark.skipif(bool(missing), reason=f"missing: {', '.join(missing)}")


needs_image_tools = _needs((MKFS_EROFS, "mkfs.erofs (erofs-utils)"), (OPENSSL, "openssl"))
needs_uki_tools = pytest.mark.skipif(
    not STUB.is_file() or SBVERIFY is None or OSSLSIGNCODE is None or OPENSSL is None,
    reason=f"needs {STUB} (systemd-boot-efi), sbverify (sbsigntool), osslsigncode and openssl")


@pytest.fixture(scope="module")
def image_case(tmp_path_factory: pytest.TempPathFactory) -> ImageCase:
    if MKFS_EROFS is None:
        pytest.skip("mkfs.erofs (erofs-utils) not installed")
    return ImageCase(tmp_path_factory.mktemp("flip-image"))


@pytest.fixture(scope="module")
def uki_case(tmp_path_factory: pytest.TempPathFactory) -> UkiCase:
    if not STUB.is_file():
        pytest.skip(f"{STUB} missing (systemd-boot-efi)")
    return UkiCase(tmp_path_factory.mktemp("flip-uki"))


def _assert_agreement(outcomes: list[Outcome]) -> None:
    wrong = [o.describe() for o in outcomes if not o.agrees]
    assert not wrong, f"{len(wrong)} of {len(outcomes)} flips disagree:\n" + "\n".join(wrong[:40])


@needs_image_tools
def test_every_byte_of_the_image_signature(image_case: ImageCase) -> None:
    assert image_case.ours_signature(image_case.der) == []
    assert image_case.oracle_signature(image_case.der, "unflipped")[0]
    outcomes = run_all(image_case.judge_signature, [(i, 0x01) for i in range(len(image_case.der))])
    _assert_agreement(outcomes)
    assert not any(o.ours for o in outcomes)  # every byte of it counts
    # What OpenSSL alone lets through and the kernel's rules stop: named, never absorbed silently.
    by_rule = {o.oracle_why for o in outcomes if o.tools and not o.oracle}
    assert by_rule <= {"kernel: SignedData/SignerInfo version", "kernel: content type is not id-data",
                       "kernel: SignerInfo digest algorithm is not SHA-256",
                       "kernel: signature algorithm is not rsaEncryption",
                       "standard: AlgorithmIdentifier parameters are not NULL"}, by_rule


@needs_uki_tools
def test_every_byte_of_the_uki_certificate_table(uki_case: UkiCase) -> None:
    assert uki_case.ours(uki_case.path) == (True, "")
    assert uki_case.oracle(uki_case.path, every_tool=True)[0]
    outcomes = run_all(uki_case.judge_table, [(i, 0x01) for i in range(uki_case.table_size)])
    _assert_agreement(outcomes)
    # Only the WIN_CERTIFICATE's zero padding to 8 bytes is free: nothing signs or reads it.
    length = int.from_bytes(uki_case.raw[uki_case.table_offset:uki_case.table_offset + 4], "little")
    assert {o.offset for o in outcomes if o.ours} == set(range(length, uki_case.table_size))
    by_rule = {o.oracle_why for o in outcomes if o.tools and not o.oracle}
    assert by_rule <= {"Authenticode: SignedData/SignerInfo version is not 1",
                       "Authenticode: signature algorithm is not RSA",
                       "standard: AlgorithmIdentifier parameters are not NULL"}, by_rule


@needs_image_tools
@pytest.mark.skipif(VERITYSETUP is None, reason="veritysetup (cryptsetup-bin) not installed")
def test_random_flips_in_the_image_fail(image_case: ImageCase) -> None:
    outcomes = run_all(image_case.judge_elsewhere, [(o, 0x01) for o in sample(image_case.covered(), 16, 7)])
    _assert_agreement(outcomes)
    assert not any(o.ours for o in outcomes), [o.describe() for o in outcomes if o.ours]
    assert all("verity" in o.ours_why for o in outcomes), [o.ours_why for o in outcomes]


@needs_uki_tools
def test_random_flips_in_the_uki_fail(uki_case: UkiCase) -> None:
    offsets = sample(uki_case.covered(), 24, 11)
    outcomes = run_all(lambda o, m: uki_case.judge(o, m, every_tool=True), [(o, 0x01) for o in offsets])
    _assert_agreement(outcomes)
    assert not any(o.ours for o in outcomes), [o.describe() for o in outcomes if o.ours]


@needs_image_tools
def test_verify_image_reports_what_check_signature_finds(image_case: ImageCase, tmp_path: Path) -> None:
    """The flips above go through pkcs7.check_signature; verify_image's signature check is it."""
    der = image_case.der
    for offset in (25, 72, 640, len(der) - 3):
        blob = flip(der, offset, 0x01)
        part = pkcs7.signature_json(image_case.root_hash, image_case.signer.fingerprint, blob)
        assert len(part) <= image_case.sig.size
        raw = bytearray(image_case.raw)
        raw[image_case.sig.offset:image_case.sig.offset + image_case.sig.size] = \
            part + bytes(image_case.sig.size - len(part))
        image = tmp_path / "foo.sysext.raw"
        image.write_bytes(bytes(raw))
        report = verify_image(image, image_case.signer.cert_path)
        assert [c.name for c in report.failed()] == ["signature"]
        assert report.check("signature").detail == "; ".join(image_case.ours_signature(blob))
