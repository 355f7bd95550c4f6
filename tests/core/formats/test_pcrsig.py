"""The .pcrpkey/.pcrsig UKI sections against systemd-measure 252 and the built UKI.

Oracles: ``systemd-measure sign`` (systemd 252 needs a TPM for the policy digest: a software TPM,
swtpm, serves it through libtss2), ``systemd-measure calculate`` (no TPM), ``openssl`` (signature
check), ``objdump -h`` (section table) and ``sbverify`` (Authenticode).
"""

from __future__ import annotations

import base64
import ctypes.util
import hashlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from sysextant.core.build.pipeline import build
from sysextant.core.demo import create_demo
from sysextant.core.errors import UserError
from sysextant.core.formats.authenticode import signature_length
from sysextant.core.formats.pcr import (
    DEFAULT_PHASES,
    MEASURED_252,
    PCR_KERNEL_IMAGE,
    pcr_selection,
    pcrsig_json,
    pcrsig_size,
    policy_pcr_digest,
    public_key_fingerprint,
)
from sysextant.core.formats.pe import parse_pe
from sysextant.core.keys import load_pcr_key, load_signer
from sysextant.core.progress import Reporter
from sysextant.core.sizing.forecast import UkiLayout
from sysextant.core.spec.load import load_spec
from sysextant.core.tree.index import scan

MEASURE = Path("/usr/lib/systemd/systemd-measure")
SWTPM = shutil.which("swtpm")
OPENSSL = shutil.which("openssl")
OBJDUMP = shutil.which("objdump")
SBVERIFY = shutil.which("sbverify")
TSS = all(ctypes.util.find_library(n) for n in ("tss2-esys", "tss2-rc", "tss2-mu", "tss2-tcti-swtpm"))
needs_measure = pytest.mark.skipif(not MEASURE.is_file(), reason=f"{MEASURE} missing (Debian package systemd)")
needs_tpm = pytest.mark.skipif(
    not (MEASURE.is_file() and SWTPM and TSS),
    reason="systemd-measure sign needs a TPM: install the Debian packages swtpm, libtss2-esys-3.0.2-0, "
           "libtss2-rc0, libtss2-mu0 and libtss2-tcti-swtpm0")


def _key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _free_port_pair() -> int:
    """A free TCP port whose successor is free too (the swtpm TCTI's control channel is port + 1)."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    pytest.skip("no free pair of TCP ports for swtpm")


@pytest.fixture(scope="module")
def tpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A software TPM for systemd-measure sign; yields its --tpm2-device value."""
    if not (SWTPM and TSS):
        pytest.skip("swtpm / libtss2 not installed")
    state = tmp_path_factory.mktemp("swtpm")
    port = _free_port_pair()
    ctrl = port + 1
    proc = subprocess.Popen([SWTPM, "socket", "--tpm2", "--tpmstate", f"dir={state}",
                             "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                             "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
                             "--flags", "not-need-init,startup-clear"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"swtpm:host=127.0.0.1,port={port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pcrsig")
    key = _key()
    (d / "pcr.key").write_bytes(_pem(key))
    files = {".linux": d / "linux", ".osrel": d / "osrel", ".cmdline": d / "cmdline", ".initrd": d / "initrd",
             ".pcrpkey": d / "pcr.pub"}
    files[".linux"].write_bytes(bytes(range(256)) * 4099)
    files[".osrel"].write_bytes(b"ID=kairos\nVERSION_ID=3\n")
    files[".cmdline"].write_bytes(b"console=ttyS0 rd.immucore.uki")
    files[".initrd"].write_bytes(b"\x28\xb5\x2f\xfd" + bytes(2_000_003))
    files[".pcrpkey"].write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                serialization.PublicFormat.SubjectPublicKeyInfo))
    return files


def measure_sign(tpm: str, files: dict[str, Path], key: Path, banks: tuple[str, ...], public: Path | None = None,
                 phases: tuple[str, ...] = ()) -> bytes:
    args = [f"--{name.removeprefix('.')}={path}" for name, path in files.items()]
    args += [f"--bank={b}" for b in banks] + [f"--phase={p}" for p in phases]
    if public is not None:
        args.append(f"--public-key={public}")
    res = subprocess.run([str(MEASURE), "sign", *args, f"--private-key={key}", f"--tpm2-device={tpm}"],
                         capture_output=True, check=True)
    return res.stdout


def measure_calculate(files: dict[str, Path], bank: str) -> dict[str, bytes]:
    args = [f"--{name.removeprefix('.')}={path}" for name, path in files.items()]
    res = subprocess.run([str(MEASURE), "calculate", *args, f"--bank={bank}", "--json=short"],
                         capture_output=True, text=True, check=True)
    return {e["phase"]: bytes.fromhex(e["hash"]) for e in json.loads(res.stdout)[bank]}


def test_pcr_selection_is_the_tpm_marshalling() -> None:
    # TPML_PCR_SELECTION{count=1, {TPM_ALG_SHA256=0x000b, sizeofSelect=3, pcrSelect={0x00,0x08,0x00}}}
    assert pcr_selection([11], "sha256") == bytes.fromhex("00000001" "000b" "03" "000800")
    assert pcr_selection([0, 7, 23], "sha1") == bytes.fromhex("00000001" "0004" "03" "810080")
    with pytest.raises(ValueError):
        pcr_selection([24], "sha256")


@needs_tpm
@pytest.mark.parametrize("banks", [("sha256",), ("sha512", "sha1", "sha256")])
def test_pcrsig_equals_systemd_measure_sign(tpm: str, inputs: dict[str, Path], banks: tuple[str, ...]) -> None:
    key_path = inputs[".pcrpkey"].parent / "pcr.key"
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    ours = pcrsig_json(list(inputs.items()), key, banks=banks)
    assert ours == measure_sign(tpm, inputs, key_path, banks, public=inputs[".pcrpkey"])
    assert ours == measure_sign(tpm, inputs, key_path, banks)  # public key derived from the private key
    assert len(ours) == pcrsig_size(key.public_key(), banks=banks)
    doc = json.loads(ours)
    assert list(doc) == sorted(banks)
    assert all(len(entries) == len(DEFAULT_PHASES) for entries in doc.values())


@needs_tpm
def test_one_phase_and_without_pcrpkey(tpm: str, inputs: dict[str, Path]) -> None:
    key_path = inputs[".pcrpkey"].parent / "pcr.key"
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    files = {n: p for n, p in inputs.items() if n != ".pcrpkey"}
    phase = ("enter-initrd:leave-initrd",)
    assert pcrsig_json(list(files.items()), key, phases=phase) == measure_sign(tpm, files, key_path, ("sha256",),
                                                                               phases=phase)


@needs_measure
def test_policy_and_signature_without_a_tpm(inputs: dict[str, Path], tmp_path: Path) -> None:
    """pol is PolicyPCR over systemd-measure calculate's values; sig verifies with openssl; pkfp is the
    SHA-256 of the PKCS#1 public key DER."""
    key = serialization.load_pem_private_key((inputs[".pcrpkey"].parent / "pcr.key").read_bytes(), password=None)
    doc = json.loads(pcrsig_json(list(inputs.items()), key, banks=("sha1", "sha256")))
    der = subprocess.run([OPENSSL or "openssl", "rsa", "-pubin", "-in", str(inputs[".pcrpkey"]), "-RSAPublicKey_out",
                          "-outform", "DER"], capture_output=True, check=True).stdout
    for bank in ("sha1", "sha256"):
        values = measure_calculate(inputs, bank)
        for phase, entry in zip(DEFAULT_PHASES, doc[bank], strict=True):
            assert entry["pcrs"] == [PCR_KERNEL_IMAGE]
            assert entry["pkfp"] == hashlib.sha256(der).hexdigest() == public_key_fingerprint(key.public_key())
            assert entry["pol"] == policy_pcr_digest({11: values[phase]}, bank).hex()
            if OPENSSL:
                (tmp_path / "pol").write_bytes(bytes.fromhex(entry["pol"]))
                (tmp_path / "sig").write_bytes(base64.b64decode(entry["sig"]))
                subprocess.run([OPENSSL, "dgst", f"-{bank}", "-verify", str(inputs[".pcrpkey"]), "-signature",
                                str(tmp_path / "sig"), str(tmp_path / "pol")], capture_output=True, check=True)


def test_size_is_fixed_by_key_size() -> None:
    for bits in (2048, 3072):
        key = _key(bits)
        for banks in (("sha256",), ("sha1", "sha384")):
            got = pcrsig_json([(".linux", b"k" * bits)], key, banks=banks)
            assert len(got) == pcrsig_size(key.public_key(), banks=banks)


# --- the UKI build -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = create_demo(tmp_path_factory.mktemp("demo") / "project", scale=0.05)
    (spec.parent / "keys/tpm2-pcr.key").write_bytes(_pem(_key()))
    text = spec.read_text().replace("level: 6 ", "level: 3 ")
    text = text.replace("  output: build/uki.efi\n", "  output: build/uki.efi\n  pcr_key: keys/tpm2-pcr.key\n")
    assert "pcr_key" in text and "level: 3" in text
    spec.write_text(text)
    return spec


def _section_bytes(path: Path) -> dict[str, bytes]:
    pe = parse_pe(path)
    out = {}
    with open(path, "rb") as fh:
        for s in pe.sections:
            fh.seek(s.raw_offset)
            out[s.name] = fh.read(min(s.virtual_size, s.raw_size))
    return out


def _measured_files(secs: dict[str, bytes], folder: Path) -> dict[str, Path]:
    """The UKI's measured sections (systemd 252's list) written to files, as systemd-measure takes them."""
    files = {}
    for name in MEASURED_252:
        if name in secs:
            files[name] = folder / name.lstrip(".")
            files[name].write_bytes(secs[name])
    return files


@pytest.fixture(scope="module")
def built(demo: Path) -> tuple[Path, object]:
    spec = load_spec(demo)
    report = build(spec, only=["uki"])
    (art,) = report.artefacts
    return Path(art.path), art


def test_uki_has_pcr_sections_in_ukify_order(built: tuple[Path, object], demo: Path) -> None:
    uki, _ = built
    names = [s.name for s in parse_pe(uki).sections]
    new = names[names.index(".osrel"):]
    assert new.index(".pcrpkey") < new.index(".initrd") < new.index(".linux") < new.index(".pcrsig") == len(new) - 1
    if OBJDUMP:
        table = subprocess.run([OBJDUMP, "-h", str(uki)], capture_output=True, text=True, check=True).stdout
        assert ".pcrpkey" in table and ".pcrsig" in table
    secs = _section_bytes(uki)
    key = load_pcr_key(load_spec(demo))
    assert key is not None
    assert secs[".pcrpkey"] == key.public_pem
    assert secs[".pcrpkey"].startswith(b"-----BEGIN PUBLIC KEY-----\n")


@pytest.mark.skipif(SBVERIFY is None, reason="sbverify not installed (Debian package sbsigntool)")
def test_uki_still_verifies(built: tuple[Path, object], demo: Path) -> None:
    uki, _ = built
    subprocess.run([SBVERIFY, "--cert", str(demo.parent / "keys/db.pem"), str(uki)], capture_output=True, check=True)


def test_size_prediction_is_exact(built: tuple[Path, object], demo: Path) -> None:
    uki, art = built
    spec = load_spec(demo)
    signer = load_signer(spec.signing.key, spec.signing.cert)
    layout = UkiLayout(spec, scan(spec.os.root), signature_len=signature_length(signer))
    assert layout.exact, layout.notes
    assert layout.size(art.extra["initrd_compressed"]) == uki.stat().st_size == art.size


@needs_measure
def test_pcrsig_signs_the_built_uki(built: tuple[Path, object], demo: Path, tmp_path: Path) -> None:
    """Every pol is PolicyPCR over what systemd-measure calculate gives for the UKI's own sections
    (.pcrpkey included), and every sig verifies with the .pcrpkey key."""
    uki, _ = built
    secs = _section_bytes(uki)
    files = _measured_files(secs, tmp_path)
    values = measure_calculate(files, "sha256")
    doc = json.loads(secs[".pcrsig"])
    public = serialization.load_pem_public_key(secs[".pcrpkey"])
    assert list(doc) == ["sha256"]
    for phase, entry in zip(DEFAULT_PHASES, doc["sha256"], strict=True):
        pol = policy_pcr_digest({11: values[phase]}, "sha256")
        assert entry["pol"] == pol.hex()
        public.verify(base64.b64decode(entry["sig"]), pol, padding.PKCS1v15(), hashes.SHA256())


@needs_tpm
def test_built_pcrsig_equals_systemd_measure_sign(built: tuple[Path, object], demo: Path, tpm: str,
                                                  tmp_path: Path) -> None:
    uki, _ = built
    secs = _section_bytes(uki)
    files = _measured_files(secs, tmp_path)
    assert measure_sign(tpm, files, demo.parent / "keys/tpm2-pcr.key", ("sha256",)) == secs[".pcrsig"]


def _bad(demo: Path, tmp_path: Path, content: bytes | None, cert: bytes | None = None) -> str:
    project = tmp_path / "p"
    shutil.copytree(demo.parent, project, symlinks=True, ignore=shutil.ignore_patterns("build"))
    key = project / "keys/tpm2-pcr.key"
    if content is None:
        key.unlink()
    else:
        key.write_bytes(content)
    if cert is not None:
        (project / "keys/pcr.pem").write_bytes(cert)
        spec_path = project / demo.name
        spec_path.write_text(spec_path.read_text().replace("  pcr_key:", "  pcr_cert: keys/pcr.pem\n  pcr_key:"))
    spec = load_spec(project / demo.name)
    logs: list[str] = []

    class Log(Reporter):
        def log(self, task: str, message: str, kind: str = "log") -> None:
            logs.append(task)

    with pytest.raises(UserError) as err:
        build(spec, reporter=Log())
    assert logs == [] and not (project / "build").exists()  # nothing scanned, nothing written
    return str(err.value)


def test_bad_pcr_key_fails_before_any_work(demo: Path, tmp_path: Path) -> None:
    msg = _bad(demo, tmp_path / "1", None)
    assert "uki.pcr_key" in msg and "does not exist" in msg
    msg = _bad(demo, tmp_path / "2", b"this is not a key\n")
    assert "uki.pcr_key" in msg and "not a PEM private key" in msg
    ec_key = ec.generate_private_key(ec.SECP256R1())
    msg = _bad(demo, tmp_path / "3", ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    assert "not an RSA key" in msg
    other = _key().public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    msg = _bad(demo, tmp_path / "4", _pem(_key()), cert=other)
    assert "uki.pcr_cert" in msg and "does not hold the public key" in msg


def test_a_new_pcr_key_means_a_new_uki(demo: Path, tmp_path: Path) -> None:
    from sysextant.core.build.ukibuild import inputs_digest
    from sysextant.core.sizing.plan import make_plan

    spec = load_spec(demo)
    plan = make_plan(spec, scan(spec.os.root))
    before = inputs_digest(spec, plan, None)
    assert inputs_digest(spec, plan, None) == before
    other = tmp_path / "other.key"
    other.write_bytes(_pem(_key()))
    spec.uki.pcr_key = other
    assert inputs_digest(spec, plan, None) != before
    spec.uki.pcr_key = None
    assert inputs_digest(spec, plan, None) != before
