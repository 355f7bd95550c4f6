"""Container images as OS trees: read an image, flatten its layers into a cached folder.

Inputs (what users hand over; OCI image-spec ``image-layout.md``, ``image-index.md``,
``manifest.md``, ``config.md``, and Docker's ``docker save`` format from moby
``image/tarexport``):

- a ``docker save`` tarball: ``manifest.json`` (``Config``, ``RepoTags``, ``Layers``) is read
  first; since Docker 25 the same tar is also an OCI layout (``index.json``, ``blobs/sha256/``),
  used when ``manifest.json`` is absent. Layers that ``docker save`` stored once and linked
  (a symlink member) are followed inside the tar;
- an OCI image layout folder (``oci-layout``, ``index.json``, ``blobs/``) or an OCI archive (a tar
  of one, as ``skopeo copy ... oci-archive:`` writes it);
- a flattened ``docker export`` tar (no layers, no config): applied as one layer;
- any of these tars compressed whole with gzip or zstd.

A multi-platform index gives the manifest of the wanted platform (``linux/amd64`` style; from
the spec's ``os.platform`` or the extensions' architecture); attestation manifests are skipped.
Every blob is checked against its descriptor (size and digest) and every layer against the
config's ``rootfs.diff_ids`` while it streams; a mismatch fails the extraction.

The flattened tree lives in a cache keyed by the image's config digest (a flat tar: the file's
sha256), ``<cache>/sha256-<hex>/rootfs`` with the sidecar beside it (:mod:`.sidecar`), made in
a temp folder that is renamed into place at the end: a reopen finds it at once, and Ctrl-C or a
failure leaves nothing half-written (temps of a killed process are removed by the next open).
Layers are applied by :mod:`.layers`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform as platform_mod
import re
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..atomic import TEMP_PREFIX, stale_temps, temp_prefix, write_atomic
from ..errors import UserError
from ..progress import Reporter
from .layers import Target, can_own
from .sidecar import ROOT_NAME, SIDECAR
from .tarstream import Bounded, LimitExceeded, Member, TarError, TarReader, open_stream, sniff

FORMAT_VERSION = 1  # bump when flattening changes: old cache entries are then not reused
MAX_JSON = 16 << 20
ARCH_TO_OCI = {"x86-64": "amd64", "arm64": "arm64", "riscv64": "riscv64", "x86": "386", "arm": "arm",
               "loongarch64": "loong64", "ppc64-le": "ppc64le", "s390x": "s390x"}
_MACHINE_TO_OCI = {"x86_64": "amd64", "aarch64": "arm64", "riscv64": "riscv64", "i686": "386", "i386": "386",
                   "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "loongarch64": "loong64"}
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json")
_DIGEST = re.compile(r"^(sha256|sha512):([0-9a-f]{64}|[0-9a-f]{128})$")


def host_platform() -> str:
    return "linux/" + _MACHINE_TO_OCI.get(platform_mod.machine(), platform_mod.machine())


def platform_for_arch(arch: str) -> str:
    """``linux/amd64`` for the systemd architecture ``x86-64``."""
    return "linux/" + ARCH_TO_OCI.get(arch, arch)


@dataclass
class Limits:
    """Bounds on what one layer may expand to (a decompression bomb stops there)."""

    max_ratio: int = 1000  # decompressed bytes per stored byte; gzip itself cannot exceed ~1032
    max_layer_bytes: int = 1 << 40
    floor: int = 64 << 20  # small layers may always expand this far
    min_free: int = 64 << 20  # stop before the cache's disk has less than this left

    def for_layer(self, stored: int | None) -> int:
        if not stored:
            return self.max_layer_bytes
        return min(self.max_layer_bytes, max(self.floor, stored * self.max_ratio))

    @classmethod
    def from_env(cls) -> Limits:
        lim = cls()
        raw = os.environ.get("SYSEXTANT_IMAGE_MAX_RATIO", "").strip()
        if raw.isdigit() and int(raw) > 0:
            lim.max_ratio = int(raw)
        return lim


@dataclass
class Layer:
    what: str  # "layer 2 of 5 (sha256:ab12...)"
    open: Callable[[], BinaryIO]  # a stream at the blob's first byte; the caller closes it
    size: int | None  # stored bytes, when a descriptor or the tar says
    digest: str | None = None  # of the stored blob
    diff_id: str | None = None  # of the uncompressed tar


@dataclass
class ImageSource:
    """An image read far enough to know what to flatten."""

    path: Path
    format: str  # docker-save | docker-save-oci | oci-layout | oci-archive | docker-export
    key: str  # sha256 hex the cache is keyed by
    platform: str = ""
    tags: list[str] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)


@dataclass
class OpenedImage:
    """A flattened image ready to scan: ``root`` is the tree."""

    root: Path
    image: Path
    key: str
    format: str
    platform: str
    reused: bool
    seconds: float = 0.0
    layers: int = 0


# -- reading the containers -----------------------------------------------------------------------
def _norm(name: bytes) -> str:
    return os.path.normpath(os.fsdecode(name).lstrip("/")).removeprefix("./") if name else ""


class _TarFile:
    """An uncompressed tar on disk read as a table of contents (headers only, by seeking)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.members: dict[str, Member] = {}
        with open(path, "rb") as fh:
            for m in TarReader(fh, str(path)):
                self.members[_norm(m.name)] = m

    def _resolve(self, name: str) -> Member | None:
        for _ in range(8):
            m = self.members.get(name)
            if m is None:
                return None
            if m.type == b"2":  # docker save links a layer it already wrote
                name = _norm(os.path.join(os.path.dirname(name), os.fsdecode(m.linkname)).encode())
            elif m.type == b"1":
                name = _norm(m.linkname)
            else:
                return m
        return None

    def has(self, name: str) -> bool:
        return self._resolve(name) is not None

    def size(self, name: str) -> int:
        m = self._resolve(name)
        if m is None:
            raise UserError(f"{self.path}: {name} is named by the image but not in the tar")
        return m.size

    def opener(self, name: str) -> Callable[[], BinaryIO]:
        m = self._resolve(name)
        if m is None:
            raise UserError(f"{self.path}: {name} is named by the image but not in the tar")

        def open_() -> BinaryIO:
            fh = open(self.path, "rb")  # noqa: SIM115 - the caller closes it
            fh.seek(m.offset)
            return fh
        return open_

    def read(self, name: str) -> bytes:
        m = self._resolve(name)
        if m is None:
            raise UserError(f"{self.path}: {name} is named by the image but not in the tar")
        if m.size > MAX_JSON:
            raise UserError(f"{self.path}: {name} is {m.size} bytes; an image's JSON is smaller; refused")
        with open(self.path, "rb") as fh:
            fh.seek(m.offset)
            data = fh.read(m.size)
        if len(data) != m.size:
            raise UserError(f"{self.path}: {name} claims {m.size} bytes but the tar ends early")
        return data


class _Folder:
    """An OCI layout folder: files read by name (blobs by validated digest only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _file(self, name: str) -> Path:
        p = self.path / name
        if p.is_symlink() or not p.is_file():
            raise UserError(f"{self.path}: {name} is missing or not a regular file")
        return p

    def has(self, name: str) -> bool:
        p = self.path / name
        return p.is_file() and not p.is_symlink()

    def size(self, name: str) -> int:
        return self._file(name).stat().st_size

    def opener(self, name: str) -> Callable[[], BinaryIO]:
        p = self._file(name)
        return lambda: open(p, "rb")

    def read(self, name: str) -> bytes:
        p = self._file(name)
        if p.stat().st_size > MAX_JSON:
            raise UserError(f"{p} is larger than {MAX_JSON} bytes; an image's JSON is smaller; refused")
        return p.read_bytes()


def _json(data: bytes, where: str):
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{where} is not valid JSON ({exc})") from None


def _blob_name(digest: str, where: str) -> str:
    m = _DIGEST.match(digest or "")
    if not m:
        raise UserError(f"{where}: {digest!r} is not a sha256/sha512 digest")
    return f"blobs/{m.group(1)}/{m.group(2)}"


def _check_digest(data: bytes, digest: str, where: str) -> None:
    alg, _, hexd = digest.partition(":")
    if hashlib.new(alg, data).hexdigest() != hexd:
        raise UserError(f"{where}: the content does not match its digest {digest}")


def _read_blob(src, desc: dict, where: str) -> bytes:
    if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
        raise UserError(f"{where}: a descriptor without a digest")
    name = _blob_name(desc["digest"], where)
    data = src.read(name)
    if isinstance(desc.get("size"), int) and desc["size"] != len(data):
        raise UserError(f"{where}: {desc['digest']} holds {len(data)} bytes, its descriptor says {desc['size']}")
    _check_digest(data, desc["digest"], where)
    return data


def _matches(plat: dict, want: str) -> bool:
    parts = want.split("/")
    if plat.get("os") != parts[0] or plat.get("architecture") != (parts[1] if len(parts) > 1 else ""):
        return False
    return len(parts) < 3 or plat.get("variant") in (None, parts[2])


def _is_attestation(desc: dict) -> bool:
    ann = desc.get("annotations") or {}
    plat = desc.get("platform") or {}
    return ann.get("vnd.docker.reference.type") == "attestation-manifest" or plat.get("os") == "unknown"


def _choose_manifest(src, index: dict, want: str, explicit: bool, where: str, depth: int = 0) -> tuple[dict, str]:
    """(manifest document, its platform) from an index, following nested indexes."""
    if depth > 4:
        raise UserError(f"{where}: image indexes nested too deeply")
    manifests = [d for d in index.get("manifests") or [] if isinstance(d, dict) and not _is_attestation(d)]
    if not manifests:
        raise UserError(f"{where}: the image index lists no image")
    with_plat = [d for d in manifests if isinstance(d.get("platform"), dict)]
    if with_plat:
        picked = [d for d in with_plat if _matches(d["platform"], want)]
        if not picked:
            have = ", ".join(sorted({f"{d['platform'].get('os')}/{d['platform'].get('architecture')}"
                                     + (f"/{d['platform']['variant']}" if d["platform"].get("variant") else "")
                                     for d in with_plat}))
            raise UserError(f"{where} holds no image for {want} (it has {have}); set os.platform to one of them")
        desc = picked[0]
    elif len(manifests) == 1:
        desc = manifests[0]
    else:
        names = [((d.get("annotations") or {}).get("org.opencontainers.image.ref.name") or d.get("digest", "?"))
                 for d in manifests]
        raise UserError(f"{where} holds {len(manifests)} images without platforms ({', '.join(names[:5])}); "
                        "keep one image in the file")
    doc = _json(_read_blob(src, desc, where), f"{where}: {desc['digest']}")
    kind = desc.get("mediaType") or doc.get("mediaType") or ("index" if "manifests" in doc else "manifest")
    if kind in INDEX_TYPES or kind == "index" or ("manifests" in doc and "layers" not in doc):
        return _choose_manifest(src, doc, want, explicit, where, depth + 1)
    plat = desc.get("platform") or {}
    return doc, (f"{plat['os']}/{plat['architecture']}" if plat.get("os") and plat.get("architecture") else "")


def _config_platform(config: dict) -> str:
    os_, arch = config.get("os"), config.get("architecture")
    if isinstance(os_, str) and isinstance(arch, str) and os_ and arch:
        return f"{os_}/{arch}" + (f"/{config['variant']}" if isinstance(config.get("variant"), str) else "")
    return ""


def _check_platform(path: Path, found: str, want: str, explicit: bool) -> None:
    if explicit and found and not _matches(dict(zip(("os", "architecture", "variant"), found.split("/"), strict=False)), want):
        raise UserError(f"{path} is an image for {found}, not {want}; set os.platform to {found} or use the "
                        "image for your architecture")


def _diff_ids(config: dict, n: int, where: str) -> list[str | None]:
    ids = (config.get("rootfs") or {}).get("diff_ids")
    if not isinstance(ids, list):
        return [None] * n
    if len(ids) != n:
        raise UserError(f"{where}: the config lists {len(ids)} layers (rootfs.diff_ids), the manifest {n}")
    return [i if isinstance(i, str) and _DIGEST.match(i) else None for i in ids]


def _layer_what(path: Path, i: int, n: int, digest: str | None) -> str:
    short = f" ({digest[:19]})" if digest else ""
    return f"{path.name}: layer {i + 1} of {n}{short}"


def _from_oci(path: Path, src, want: str, explicit: bool, fmt: str) -> ImageSource:
    where = str(path)
    if not src.has("index.json"):
        raise UserError(f"{path}: no index.json (not an OCI image layout)")
    index = _json(src.read("index.json"), f"{path}: index.json")
    if not isinstance(index, dict):
        raise UserError(f"{path}: index.json is not an image index")
    manifest, plat = _choose_manifest(src, index, want, explicit, where)
    if not isinstance(manifest.get("config"), dict) or not isinstance(manifest.get("layers"), list):
        raise UserError(f"{where}: the manifest has no config or no layers")
    config_bytes = _read_blob(src, manifest["config"], where)
    config = _json(config_bytes, f"{where}: config")
    found = _config_platform(config) or plat
    _check_platform(path, found, want, explicit)
    descs = manifest["layers"]
    ids = _diff_ids(config, len(descs), where)
    layers = []
    for i, d in enumerate(descs):
        mt = str(d.get("mediaType", ""))
        if "tar" not in mt or "encrypted" in mt:
            raise UserError(f"{where}: layer {i + 1} has the media type {mt!r}, which is not a (gzip/zstd) tar; refused")
        name = _blob_name(d.get("digest", ""), where)
        size = d.get("size") if isinstance(d.get("size"), int) else None
        stored = src.size(name)
        if size is not None and stored != size:
            raise UserError(f"{_layer_what(path, i, len(descs), d['digest'])}: the blob holds {stored} bytes, its "
                            f"descriptor says {size}; refused")
        layers.append(Layer(_layer_what(path, i, len(descs), d["digest"]), src.opener(name), stored, d["digest"], ids[i]))
    key = hashlib.sha256(config_bytes).hexdigest()
    return ImageSource(path, fmt, key, found, [], layers)


def _from_docker_manifest(path: Path, tar: _TarFile, want: str, explicit: bool) -> ImageSource:
    where = f"{path}: manifest.json"
    doc = _json(tar.read("manifest.json"), where)
    if not isinstance(doc, list) or not doc or not all(isinstance(e, dict) for e in doc):
        raise UserError(f"{where} lists no image")
    entries = []
    for e in doc:
        if not isinstance(e.get("Config"), str) or not isinstance(e.get("Layers"), list):
            raise UserError(f"{where}: an image without Config or Layers")
        cfg_bytes = tar.read(_norm(e["Config"].encode()))
        entries.append((e, cfg_bytes, _json(cfg_bytes, f"{path}: {e['Config']}")))
    if len(entries) > 1:
        picked = [x for x in entries if _matches(dict(zip(("os", "architecture", "variant"),
                                                          _config_platform(x[2]).split("/"), strict=False)), want)]
        if len(picked) != 1:
            tags = [", ".join(x[0].get("RepoTags") or ["<untagged>"]) for x in entries]
            raise UserError(f"{path} holds {len(entries)} images ({'; '.join(tags)}); save one image per file")
        entries = picked
    e, cfg_bytes, config = entries[0]
    found = _config_platform(config)
    _check_platform(path, found, want, explicit)
    names = [_norm(str(x).encode()) for x in e["Layers"]]
    ids = _diff_ids(config, len(names), where)
    layers = []
    for i, name in enumerate(names):
        blob = re.fullmatch(r"blobs/(sha256|sha512)/([0-9a-f]+)", name)
        digest = f"{blob.group(1)}:{blob.group(2)}" if blob else None
        layers.append(Layer(_layer_what(path, i, len(names), digest or ids[i]), tar.opener(name), tar.size(name),
                            digest, ids[i]))
    fmt = "docker-save-oci" if tar.has("index.json") else "docker-save"
    return ImageSource(path, fmt, hashlib.sha256(cfg_bytes).hexdigest(), found,
                       [str(t) for t in e.get("RepoTags") or []], layers)


def _file_sha256(path: Path, check: Callable[[], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 << 20):
            h.update(chunk)
            if check is not None:
                check()
    return h.hexdigest()


def _looks_like_layout(names: list[str]) -> bool:
    for n in names:
        top = n.split("/", 1)[0]
        if n in ("manifest.json", "index.json", "oci-layout", "repositories") or top == "blobs" \
                or re.fullmatch(r"[0-9a-f]{64}(\.json)?", top):
            return True
    return False


def is_image_path(path: Path) -> bool:
    """Whether ``path`` names an image rather than an OS tree folder: a file, or a folder holding
    an OCI layout."""
    try:
        if path.is_dir():
            return (path / "oci-layout").is_file()
        return path.is_file()
    except OSError:
        return False


def read_source(path: Path, platform: str | None = None, *, work: Path | None = None,
                check: Callable[[], None] | None = None, explicit: bool | None = None) -> ImageSource:
    """Read the image at ``path`` far enough to flatten it. ``work`` is where a tar compressed
    whole is decompressed first (it needs random access). An ``explicit`` platform (the default
    when one is given) must match a single-image file; otherwise it only picks from an index."""
    want = platform or host_platform()
    explicit = (platform is not None) if explicit is None else explicit
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UserError(f"cannot read the image {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        if not (path / "oci-layout").is_file():
            raise UserError(f"{path} is a folder without an oci-layout file: not an OCI image layout")
        return _from_oci(path, _Folder(path), want, explicit, "oci-layout")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"the image {path} is not a regular file")
    with open(path, "rb") as fh:
        head = fh.read(4)
    try:
        if sniff(head) != "tar":
            return _compressed(path, want, explicit, work, check)
        tar = _TarFile(path)
    except TarError as exc:
        raise UserError(f"{path} is neither an OS tree folder nor a container image tar ({exc})") from None
    names = list(tar.members)
    if tar.has("manifest.json"):
        return _from_docker_manifest(path, tar, want, explicit)
    if tar.has("index.json") and tar.has("oci-layout"):
        return _from_oci(path, tar, want, explicit, "oci-archive")
    if not names:
        raise UserError(f"{path} is an empty tar")
    return _flat(path, check)


def _flat(path: Path, check: Callable[[], None] | None) -> ImageSource:
    size = path.stat().st_size
    key = _file_sha256(path, check)
    return ImageSource(path, "docker-export", key, "", [],
                       [Layer(f"{path.name} (a flattened tar)", lambda: open(path, "rb"), size, f"sha256:{key}")])


def _compressed(path: Path, want: str, explicit: bool, work: Path | None, check) -> ImageSource:
    """A tar compressed whole: a flat export is one layer as it is; an image archive is
    decompressed into ``work`` first (it is read by seeking)."""
    with open(path, "rb") as fh:
        stream, _ = open_stream(fh, str(path), limit=Limits.from_env().for_layer(os.fstat(fh.fileno()).st_size))
        names = []
        with contextlib.suppress(TarError):
            for m in TarReader(stream, str(path)):
                names.append(_norm(m.name))
                if len(names) >= 8:
                    break
    if not _looks_like_layout(names):
        return _flat(path, check)
    if work is None:
        raise UserError(f"{path} is a compressed image archive; it is read through the image cache")
    work.mkdir(parents=True, exist_ok=True)
    plain = work / "image.tar"
    with open(path, "rb") as fh, open(plain, "wb") as out:
        stream, _ = open_stream(fh, str(path), limit=Limits.from_env().for_layer(os.fstat(fh.fileno()).st_size))
        while chunk := stream.read(4 << 20):
            out.write(chunk)
            if check is not None:
                check()
    src = read_source(plain, want, check=check, explicit=explicit)
    src.path = path
    for layer in src.layers:
        layer.what = layer.what.replace("image.tar:", f"{path.name}:", 1)
    return src


# -- the cache ------------------------------------------------------------------------------------
def cache_root() -> Path:
    """``$SYSEXTANT_IMAGE_CACHE``, else ``$XDG_CACHE_HOME/sysextant/images`` (``~/.cache``)."""
    env = os.environ.get("SYSEXTANT_IMAGE_CACHE", "").strip()
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sysextant" / "images"


def _entry_name(key: str, privileged: bool) -> str:
    return f"v{FORMAT_VERSION}-sha256-{key}" + ("" if privileged else ".user")


def _find_cached(cache: Path, key: str, privileged: bool) -> Path | None:
    names = [_entry_name(key, privileged)]
    if privileged:  # root reads a tree flattened without root (its sidecar says the rest), not the reverse
        names.append(_entry_name(key, False))
    for n in names:
        if (cache / n / ROOT_NAME).is_dir() and (cache / n / SIDECAR).is_file():
            return cache / n
    return None


_SOURCES = "sources.json"


def _stat_key(path: Path, platform: str | None) -> str:
    st = os.stat(path)
    return f"{os.path.realpath(path)}\0{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}\0{platform or ''}"


def _remembered(cache: Path, path: Path, platform: str | None) -> dict | None:
    """What an earlier open learnt about this very file (same inode, size and times)."""
    if not path.is_file():
        return None
    try:
        data = json.loads((cache / _SOURCES).read_text())
        return data.get(_stat_key(path, platform))
    except (OSError, ValueError, AttributeError):
        return None


def _remember(cache: Path, path: Path, platform: str | None, info: dict) -> None:
    if not path.is_file():
        return
    try:
        data = json.loads((cache / _SOURCES).read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[_stat_key(path, platform)] = info
    if len(data) > 256:  # the oldest go
        data = dict(list(data.items())[-256:])
    with contextlib.suppress(OSError, UserError):
        write_atomic(cache / _SOURCES, json.dumps(data, indent=1).encode())


def open_image(path: Path | str, *, platform: str | None = None, cache: Path | None = None,
               limits: Limits | None = None, reporter: Reporter | None = None,
               privileged: bool | None = None, explicit: bool | None = None) -> OpenedImage:
    """The flattened tree of the image at ``path``: from the cache when it is there, else
    flattened now (into a temp folder renamed into place)."""
    path = Path(path)
    cache = Path(cache) if cache is not None else cache_root()
    privileged = can_own() if privileged is None else privileged
    started = time.monotonic()
    known = _remembered(cache, path, platform)
    if known is not None:
        hit = _find_cached(cache, known["key"], privileged)
        if hit is not None:
            return OpenedImage(hit / ROOT_NAME, path, known["key"], known["format"], known.get("platform", ""), True,
                               time.monotonic() - started, known.get("layers", 0))
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the image cache {cache}: {exc.strerror}; set SYSEXTANT_IMAGE_CACHE "
                        "to a writable folder") from None
    for stale in stale_temps(cache):
        _rmtree(stale)
    check = reporter.check if reporter is not None else None
    tmp = cache / f"{temp_prefix('image')}{os.urandom(4).hex()}"
    try:
        tmp.mkdir(mode=0o700)
        src = read_source(path, platform, work=tmp / "work", check=check, explicit=explicit)
        info = {"key": src.key, "format": src.format, "platform": src.platform, "layers": len(src.layers)}
        hit = _find_cached(cache, src.key, privileged)
        if hit is None:
            flatten(src, tmp, privileged=privileged, limits=limits or Limits.from_env(), reporter=reporter)
            shutil.rmtree(tmp / "work", ignore_errors=True)
            final = cache / _entry_name(src.key, privileged)
            try:
                os.rename(tmp, final)
            except OSError:  # another process flattened the same image meanwhile: use theirs
                if _find_cached(cache, src.key, privileged) is None:
                    raise
            hit = _find_cached(cache, src.key, privileged)
            assert hit is not None
            reused = False
        else:
            reused = True
        _remember(cache, path, platform, info)
        return OpenedImage(hit / ROOT_NAME, path, src.key, src.format, src.platform, reused,
                           time.monotonic() - started, len(src.layers))
    except LimitExceeded as exc:
        raise UserError(str(exc)) from None
    except TarError as exc:
        raise UserError(f"{exc}; refused") from None
    finally:
        if tmp.exists():
            _rmtree(tmp)


def tree_folder(path: Path, *, platform: str | None = None, reporter: Reporter | None = None) -> Path:
    """The folder to scan for ``path``: itself when it is not an image (an OS tree folder, or a
    path the scan will say does not exist), else the flattened tree of the image it names (from
    the cache, or flattened now)."""
    path = Path(path)
    if not is_image_path(path):
        return path
    return open_image(path, platform=platform, reporter=reporter).root


def open_for_spec(image: Path, platform: str | None, arch: str | None) -> Path:
    """The spec's hook (core/spec/load.py IMAGE_OPENER): the flattened tree of os.root's image for
    ``os.platform``, else the extensions' architecture, else this machine's."""
    if platform is None and arch is not None:
        return open_image(image, platform=platform_for_arch(arch), explicit=False).root
    return open_image(image, platform=platform).root


def _rmtree(path: Path) -> None:
    """Remove a folder this user made, also where a flattened tree left folders read-only."""
    def onerror(func, p, _exc):  # a read-only folder (root-made trees keep real modes): open it up
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            func(p)
    shutil.rmtree(path, onerror=onerror)


def flatten(src: ImageSource, dest: Path, *, privileged: bool, limits: Limits, reporter: Reporter | None = None) -> None:
    """Apply ``src``'s layers into ``dest/rootfs`` and write the sidecar ``dest/sysextant-meta.json``."""
    rootfs = dest / ROOT_NAME
    rootfs.mkdir(mode=0o755)
    target = Target(os.fsencode(rootfs), privileged=privileged, min_free=limits.min_free)
    total = sum(layer.size or 0 for layer in src.layers)
    task = f"{src.path.name}: flatten"
    done = 0
    try:
        for layer in src.layers:
            with layer.open() as raw:
                blob = Bounded(raw, layer.size, algorithm=(layer.digest or "sha256:").split(":")[0] or "sha256")
                stream, _ = open_stream(blob, layer.what, limit=limits.for_layer(layer.size))
                reader = TarReader(stream, layer.what)

                def tick(blob=blob, before=done) -> None:
                    if reporter is not None:
                        reporter(task, before + blob.read_bytes, total)

                target.apply(reader, layer.what, tick)
                stream.drain()
                blob.drain()
                if layer.size is not None and blob.read_bytes != layer.size:
                    raise UserError(f"{layer.what}: the blob holds {blob.read_bytes} bytes, {layer.size} were "
                                    "announced (the image is truncated); refused")
                if layer.digest and blob.hash.hexdigest() != layer.digest.split(":", 1)[1]:
                    raise UserError(f"{layer.what}: the content does not match its digest {layer.digest}; refused")
                if layer.diff_id and layer.diff_id.startswith("sha256:") \
                        and stream.hash.hexdigest() != layer.diff_id.split(":", 1)[1]:
                    raise UserError(f"{layer.what}: the uncompressed layer does not match the config's diff_id "
                                    f"{layer.diff_id}; refused")
                done += blob.read_bytes
        target.finish()
        if reporter is not None:
            reporter(task, total, total)
    finally:
        target.close()
    meta = target.meta()
    (dest / SIDECAR).write_text(json.dumps(meta.to_json()))
    (dest / "image.json").write_text(json.dumps({
        "image": str(src.path), "format": src.format, "key": src.key, "platform": src.platform,
        "tags": src.tags, "layers": [{"what": x.what, "digest": x.digest, "diff_id": x.diff_id, "size": x.size}
                                     for x in src.layers],
        "privileged": privileged, "entries": target.stats.entries, "files": target.stats.files,
        "bytes": target.stats.bytes}, indent=1))


def cached_images(cache: Path | None = None) -> list[dict]:
    """What the cache holds: one dict per flattened image (image.json plus path and bytes on disk)."""
    cache = Path(cache) if cache is not None else cache_root()
    out = []
    with contextlib.suppress(OSError):
        for d in sorted(cache.iterdir()):
            if d.name.startswith(TEMP_PREFIX) or not d.is_dir():
                continue
            try:
                info = json.loads((d / "image.json").read_text())
            except (OSError, ValueError):
                info = {}
            info["path"] = str(d)
            info["disk_bytes"] = _disk_bytes(d)
            out.append(info)
    return out


def _disk_bytes(d: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(d):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total


def clean_cache(cache: Path | None = None) -> tuple[int, int]:
    """Remove every flattened image and temp of a finished process; returns (folders, bytes)."""
    cache = Path(cache) if cache is not None else cache_root()
    count = freed = 0
    if not cache.is_dir():
        return 0, 0
    for d in list(cache.iterdir()):
        if d.name.startswith(TEMP_PREFIX):
            if d not in stale_temps(cache):
                continue  # a flatten still running
        elif not d.is_dir():
            continue
        freed += _disk_bytes(d)
        _rmtree(d)
        count += 1
    with contextlib.suppress(OSError):
        (cache / _SOURCES).unlink()
    return count, freed


__all__ = ["ImageSource", "Layer", "Limits", "OpenedImage", "cache_root", "cached_images", "clean_cache", "flatten",
           "host_platform", "is_image_path", "open_image", "platform_for_arch", "read_source"]
