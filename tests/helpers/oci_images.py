"""Container images built in Python, byte for byte in the formats Docker and OCI tools write.

Layers are PAX tars made with :mod:`tarfile` (Go's archive/tar writes PAX too); whiteouts are
empty ``.wh.NAME`` files; images are written as a legacy ``docker save`` tar (``manifest.json``,
``<id>/layer.tar``, ``<id>.json``, ``repositories``), the Docker 25+ ``docker save`` tar (an OCI
layout plus ``manifest.json``), an OCI image layout folder (optionally multi-platform, with an
attestation manifest like buildx writes), an OCI archive, and a flat ``docker export`` tar.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

MT_LAYER = {None: "application/vnd.oci.image.layer.v1.tar", "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
            "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MTIME = 1_700_000_000


@dataclass
class E:
    """One layer entry: kind is file, dir, symlink, hardlink, chr, blk, fifo, whiteout, opaque."""

    kind: str
    name: str
    data: bytes = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    target: str = ""
    major: int = 0
    minor: int = 0
    mtime: int = MTIME
    xattrs: dict[str, bytes] = field(default_factory=dict)
    size: int | None = None  # a lying size for hostile tests


def f(name: str, data: bytes | str = b"", **kw) -> E:
    return E("file", name, data.encode() if isinstance(data, str) else data, **kw)


def d(name: str, **kw) -> E:
    return E("dir", name, **kw)


def ln(name: str, target: str, **kw) -> E:
    return E("symlink", name, target=target, **kw)


def hl(name: str, target: str, **kw) -> E:
    return E("hardlink", name, target=target, **kw)


def wh(name: str) -> E:
    parent, _, base = name.rpartition("/")
    return E("file", (parent + "/" if parent else "") + ".wh." + base, mode=0o644)


def opq(folder: str) -> E:
    return E("file", folder.rstrip("/") + "/.wh..wh..opq", mode=0o644)


def layer_tar(entries: list[E]) -> bytes:
    """An uncompressed PAX layer tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.uid, ti.gid, ti.mtime = e.uid, e.gid, e.mtime
            ti.uname = ti.gname = ""
            data = None
            if e.kind == "file":
                ti.type = tarfile.REGTYPE
                ti.mode = 0o644 if e.mode is None else e.mode
                ti.size = len(e.data)
                data = io.BytesIO(e.data)
            elif e.kind == "dir":
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755 if e.mode is None else e.mode
            elif e.kind == "symlink":
                ti.type = tarfile.SYMTYPE
                ti.linkname = e.target
                ti.mode = 0o777
            elif e.kind == "hardlink":
                ti.type = tarfile.LNKTYPE
                ti.linkname = e.target
                ti.mode = 0o644 if e.mode is None else e.mode
            elif e.kind in ("chr", "blk"):
                ti.type = tarfile.CHRTYPE if e.kind == "chr" else tarfile.BLKTYPE
                ti.devmajor, ti.devminor = e.major, e.minor
                ti.mode = 0o620 if e.mode is None else e.mode
            elif e.kind == "fifo":
                ti.type = tarfile.FIFOTYPE
                ti.mode = 0o600 if e.mode is None else e.mode
            else:
                raise ValueError(e.kind)
            if e.xattrs:
                ti.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in e.xattrs.items()}
            tar.addfile(ti, data)
    raw = buf.getvalue()
    return raw


def compress(raw: bytes, how: str | None) -> bytes:
    if how == "gzip":
        return gzip.compress(raw, mtime=0)
    if how == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(raw)
    return raw


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_for(layers: list[bytes], arch: str = "amd64") -> bytes:
    return json.dumps({
        "architecture": arch, "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(x) for x in layers]},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }, sort_keys=True).encode()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = 0
    ti.mode = 0o644
    tar.addfile(ti, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mode = 0o755
    tar.addfile(ti)


def docker_save(path: Path, layers: list[bytes], *, tag: str = "example/os:1", arch: str = "amd64",
                dedupe_link: bool = False) -> Path:
    """A legacy ``docker save`` tar (Docker < 25): layers as ``<id>/layer.tar``, manifest.json at
    the end. ``dedupe_link``: the last layer is a symlink to the first (Docker does this for a
    layer it already wrote)."""
    cfg = config_for(layers, arch)
    cfg_hex = hashlib.sha256(cfg).hexdigest()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        names = []
        parent = ""
        for i, raw in enumerate(layers):
            lid = hashlib.sha256((parent + sha(raw)).encode()).hexdigest()
            _add_dir(tar, lid)
            _add(tar, f"{lid}/VERSION", b"1.0")
            _add(tar, f"{lid}/json", json.dumps({"id": lid, **({"parent": parent} if parent else {})}).encode())
            if dedupe_link and i == len(layers) - 1 and i > 0 and layers[0] == raw:
                ti = tarfile.TarInfo(f"{lid}/layer.tar")
                ti.type = tarfile.SYMTYPE
                ti.linkname = f"../{names[0].split('/')[0]}/layer.tar"
                tar.addfile(ti)
            else:
                _add(tar, f"{lid}/layer.tar", raw)
            names.append(f"{lid}/layer.tar")
            parent = lid
        _add(tar, f"{cfg_hex}.json", cfg)
        _add(tar, "manifest.json", json.dumps([{"Config": f"{cfg_hex}.json", "RepoTags": [tag], "Layers": names}]).encode())
        repo, _, version = tag.rpartition(":")
        _add(tar, "repositories", json.dumps({repo: {version: parent}}).encode())
    return path


def _layout_blobs(layers: list[bytes], how: str | None, arch: str) -> tuple[dict[str, bytes], dict]:
    """Blobs (digest -> bytes) and the manifest descriptor of one image."""
    blobs: dict[str, bytes] = {}
    cfg = config_for(layers, arch)
    blobs[sha(cfg)] = cfg
    descs = []
    for raw in layers:
        stored = compress(raw, how)
        blobs[sha(stored)] = stored
        descs.append({"mediaType": MT_LAYER[how], "digest": sha(stored), "size": len(stored)})
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MT_MANIFEST,
                           "config": {"mediaType": MT_CONFIG, "digest": sha(cfg), "size": len(cfg)},
                           "layers": descs}, sort_keys=True).encode()
    blobs[sha(manifest)] = manifest
    return blobs, {"mediaType": MT_MANIFEST, "digest": sha(manifest), "size": len(manifest),
                   "platform": {"os": "linux", "architecture": arch}}


def layout_files(images: dict[str, list[bytes]], *, how: str | None = "gzip", multi: bool = False,
                 ref: str = "latest") -> dict[str, bytes]:
    """The files of an OCI layout: ``images`` maps an architecture to its layers. ``multi``:
    index.json points at an image index (as buildx/Docker 25 write) with an attestation manifest."""
    blobs: dict[str, bytes] = {}
    descs = []
    for arch, layers in images.items():
        b, desc = _layout_blobs(layers, how, arch)
        blobs.update(b)
        descs.append(desc)
    if multi:
        att = json.dumps({"schemaVersion": 2, "mediaType": MT_MANIFEST,
                          "config": {"mediaType": MT_CONFIG, "digest": sha(b"{}"), "size": 2}, "layers": []}).encode()
        blobs[sha(b"{}")] = b"{}"
        blobs[sha(att)] = att
        descs.append({"mediaType": MT_MANIFEST, "digest": sha(att), "size": len(att),
                      "platform": {"os": "unknown", "architecture": "unknown"},
                      "annotations": {"vnd.docker.reference.type": "attestation-manifest"}})
        index = json.dumps({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": descs}).encode()
        blobs[sha(index)] = index
        top = [{"mediaType": MT_INDEX, "digest": sha(index), "size": len(index),
                "annotations": {"org.opencontainers.image.ref.name": ref}}]
    else:
        assert len(descs) == 1
        top = [{**{k: v for k, v in descs[0].items() if k != "platform"},
                "annotations": {"org.opencontainers.image.ref.name": ref}}]
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
             "index.json": json.dumps({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": top}).encode()}
    for digest, data in blobs.items():
        files["blobs/sha256/" + digest.split(":")[1]] = data
    return files


def oci_layout(folder: Path, images: dict[str, list[bytes]], **kw) -> Path:
    for name, data in layout_files(images, **kw).items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return folder


def oci_archive(path: Path, images: dict[str, list[bytes]], *, docker_manifest: bool = False,
                tag: str = "example/os:1", **kw) -> Path:
    """An OCI archive; ``docker_manifest`` makes it what ``docker save`` writes since Docker 25
    (blobs uncompressed, plus manifest.json naming them)."""
    files = layout_files(images, **kw)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_dir(tar, "blobs")
        _add_dir(tar, "blobs/sha256")
        for name in sorted(files):
            if name.startswith("blobs/"):
                _add(tar, name, files[name])
        if docker_manifest:
            (arch, layers), = images.items()
            cfg = config_for(layers, arch)
            comp = kw.get("how", "gzip")
            names = ["blobs/sha256/" + sha(compress(x, comp)).split(":")[1] for x in layers]
            _add(tar, "manifest.json", json.dumps([{"Config": "blobs/sha256/" + sha(cfg).split(":")[1],
                                                   "RepoTags": [tag], "Layers": names}]).encode())
        _add(tar, "index.json", files["index.json"])
        _add(tar, "oci-layout", files["oci-layout"])
    return path


def flat_tar(path: Path, entries: list[E]) -> Path:
    path.write_bytes(layer_tar(entries))
    return path


def tree_listing(root: Path, meta=None) -> dict[str, tuple]:
    """Every entry under ``root`` with its metadata (type+mode, uid, gid, size, content digest or
    link target, device, user.* xattrs, mtime of non-folders), as the sidecar corrects it."""
    out = {}
    broot = os.fsencode(root)
    for dirpath, dirs, files in os.walk(broot):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, broot)
            st = os.lstat(p)
            mode, uid, gid, rdev = st.st_mode, st.st_uid, st.st_gid, st.st_rdev
            xattrs = {}
            try:
                for n in os.listxattr(p, follow_symlinks=False):
                    xattrs[n] = os.getxattr(p, n, follow_symlinks=False)
            except OSError:
                pass
            if meta is not None:
                rec = meta.records.get(rel)
                if rec is not None:
                    mode, uid, gid, rdev = rec.mode, rec.uid, rec.gid, rec.rdev
                    xattrs.update({os.fsdecode(k): v for k, v in rec.xattrs.items()})
                elif not meta.owners_on_disk:
                    uid = gid = 0
            import stat as s
            if s.S_ISREG(mode):
                with open(p, "rb") as fh:
                    content = hashlib.sha256(fh.read()).hexdigest()
            elif s.S_ISLNK(mode):
                content = os.readlink(p)
            else:
                content = None
            if not (s.S_ISCHR(mode) or s.S_ISBLK(mode)):
                rdev = 0
            out[os.fsdecode(rel)] = (oct(mode), uid, gid, content, rdev, tuple(sorted(xattrs.items())),
                                     None if s.S_ISDIR(mode) else int(st.st_mtime))
    return out
