"""The VM's firmware: Debian's OVMF build with Secure Boot, and a fresh variable store that trusts
exactly the spec's db certificate.

OVMF (package ``ovmf``) ships ``OVMF_CODE_4M.secboot.fd`` (the code, read-only pflash; it needs
SMM) and ``OVMF_VARS_4M.fd`` (an empty variable store, the template). Enrolling keys means
writing authenticated variables into that store: PyPI ``virt-firmware`` (Gerd Hoffmann, the
OVMF/QEMU firmware maintainer; ``virt-fw-vars --set-pk --add-kek --add-db --sb``) does it offline,
without booting a key-enrolment shell. Its import is deferred so the rest of sysextant works
without the ``vm`` extra. The certificate is enrolled as PK, KEK and db (the spec's one key is all
three: good for a test VM, not a key hierarchy for real machines), ``dbx`` gets virt-firmware's
placeholder entry and ``SecureBootEnable`` is set, so the firmware enforces signatures from the
first boot.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import MissingToolError, UserError

#: where distributions put OVMF: Debian/Ubuntu first (``ovmf``), then Fedora's edk2-ovmf names
FIRMWARE_DIRS = ("/usr/share/OVMF", "/usr/share/ovmf", "/usr/share/edk2/ovmf", "/usr/share/edk2-ovmf/x64")
SECURE_CODE = ("OVMF_CODE_4M.secboot.fd", "OVMF_CODE.secboot.fd")
PLAIN_CODE = ("OVMF_CODE_4M.fd", "OVMF_CODE.fd")
VARS_TEMPLATE = ("OVMF_VARS_4M.fd", "OVMF_VARS.fd")
#: the owner GUID written next to each enrolled certificate (any GUID does; this one is sysextant's)
OWNER_GUID = "8f4c8f66-6b4f-4c2b-9b3a-73797365787a"


@dataclass(frozen=True)
class Firmware:
    code: Path  # read-only pflash
    vars_template: Path  # copied and enrolled per boot, never written
    secure_boot: bool  # the code is the Secure Boot build (needs -machine smm=on)


def _search(names: tuple[str, ...]) -> Path | None:
    override = os.environ.get("SYSEXTANT_OVMF_DIR")
    dirs = (override,) if override else FIRMWARE_DIRS
    for d in dirs:
        for name in names:
            p = Path(d) / name
            if p.is_file():
                return p
    return None


def find_firmware(*, secure_boot: bool = True) -> Firmware:
    """Debian's OVMF code (the Secure Boot build unless ``secure_boot`` is False) and its empty
    variable store, or :class:`MissingToolError` naming the package. ``SYSEXTANT_OVMF_DIR``
    points at another folder holding the same file names."""
    code = _search(SECURE_CODE if secure_boot else PLAIN_CODE)
    template = _search(VARS_TEMPLATE)
    if code is None or template is None:
        missing = (SECURE_CODE if secure_boot else PLAIN_CODE)[0] if code is None else VARS_TEMPLATE[0]
        raise MissingToolError(missing, "ovmf", "as the VM's UEFI firmware"
                               + (" with Secure Boot" if secure_boot else ""))
    return Firmware(code, template, secure_boot)


def _virt_firmware():
    try:
        from virt.firmware.efi import efivar  # noqa: F401  (checks the whole package imports)
        from virt.firmware.varstore import autodetect
    except ImportError:
        raise UserError("the Python package virt-firmware is not installed (needed to enrol the db "
                        "certificate into the VM's firmware); install it with "
                        "pip install 'sysextant[vm]' (or pip install virt-firmware)") from None
    return autodetect


def make_vars(template: Path, cert: Path | None, out: Path) -> None:
    """Write a copy of the OVMF variable store ``template`` to ``out`` with ``cert`` (PEM or DER)
    enrolled as PK, KEK and db and Secure Boot enforced. ``cert`` None: an unchanged copy (setup
    mode, nothing enforced: for unsigned builds)."""
    if cert is None:
        out.write_bytes(template.read_bytes())
        return
    autodetect = _virt_firmware()
    store = autodetect.open_varstore(os.fspath(template))
    if store is None:
        raise UserError(f"{template} is not an OVMF variable store virt-firmware can read")
    varlist = store.get_varlist()
    try:
        varlist.add_cert("PK", OWNER_GUID, os.fspath(cert), True)
        varlist.add_cert("KEK", OWNER_GUID, os.fspath(cert), True)
        varlist.add_cert("db", OWNER_GUID, os.fspath(cert), True)
    except ValueError as exc:
        raise UserError(f"certificate {cert} cannot be enrolled in the firmware: {exc}") from None
    varlist.enable_secureboot()
    store.write_varstore(os.fspath(out), varlist)


@dataclass(frozen=True)
class Enrolled:
    """What a variable store trusts: SHA-256 fingerprints of the X.509 certificates per variable."""

    pk: tuple[str, ...]
    kek: tuple[str, ...]
    db: tuple[str, ...]
    secure_boot: bool


def read_vars(path: Path) -> Enrolled:
    """The certificates a variable store holds in PK, KEK and db, and whether Secure Boot is on
    (a defensive reader for tests and reports; same library as the writer)."""
    from cryptography.hazmat.primitives import hashes

    autodetect = _virt_firmware()
    store = autodetect.open_varstore(os.fspath(path))
    if store is None:
        raise UserError(f"{path} is not an OVMF variable store")
    varlist = store.get_varlist()

    def prints(name: str) -> tuple[str, ...]:
        var = varlist.get(name)
        if var is None or var.sigdb is None:
            return ()
        return tuple(sl.x509.fingerprint(hashes.SHA256()).hex() for sl in var.sigdb if sl.x509 is not None)

    sb = varlist.get("SecureBootEnable")
    return Enrolled(prints("PK"), prints("KEK"), prints("db"), bool(sb is not None and sb.data[:1] == b"\x01"))


def cert_fingerprint(cert: Path) -> str:
    """SHA-256 fingerprint (hex) of a PEM or DER certificate, as :func:`read_vars` reports it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    data = cert.read_bytes()
    c = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    return c.fingerprint(hashes.SHA256()).hex()
