"""Flattening a container image: sysextant against `umoci unpack` and plain `tar -x` of the same
layers, a cached reopen, and peak memory.

    .venv/bin/python bench/images.py [--scale 0.3] [--compress gzip|zstd|none]

The image is the demo tree (core/demo.py) in three layers (the firmware in its own layer, junk
added then whited out), as an OCI layout. `tar -x` applies no whiteouts and checks no digest: it
is the floor. umoci reads no zstd layers, so it is skipped then.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS / "helpers"), str(TESTS / "core" / "tree")]  # oci_images, test_oci


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=0.3)
    ap.add_argument("--compress", default="gzip", choices=("gzip", "zstd", "none"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    from oci_images import f, layer_tar, oci_layout, wh
    from test_oci import _tree_tar

    from sysextant.core.demo import create_demo
    from sysextant.core.tree import oci
    from sysextant.core.tree.index import scan

    work = Path(tempfile.mkdtemp(prefix="sysextant-bench-images-"))
    try:
        spec = create_demo(work / "demo", scale=args.scale)
        rootfs = spec.parent / "rootfs"
        fw = "usr/lib/firmware"
        layers = [_tree_tar(rootfs, lambda r: not (r == fw or r.startswith(fw + "/")), [f("usr/share/junk", "j" * 4096)]),
                  _tree_tar(rootfs, lambda r: r == fw or r.startswith(fw + "/")),
                  layer_tar([wh("usr/share/junk")])]
        how = None if args.compress == "none" else args.compress
        layout = oci_layout(work / "layout", {"amd64": layers}, how=how)
        raw = sum(len(x) for x in layers)
        stored = sum(p.stat().st_size for p in (layout / "blobs/sha256").iterdir())
        print(f"image: {raw / 2**20:.0f} MiB of layers, {stored / 2**20:.0f} MiB stored ({args.compress})")

        # ours, in a child so its peak memory is its own
        code = ("import resource, sys, time; from pathlib import Path; from sysextant.core.tree import oci; "
                "t=time.perf_counter(); o=oci.open_image(Path(sys.argv[1]), cache=Path(sys.argv[2])); "
                "print(time.perf_counter()-t, [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
        out = subprocess.run([sys.executable, "-c", code, str(layout), str(work / "cache")], check=True,
                             capture_output=True, text=True).stdout.split()
        ours, peak_kib = float(out[0]), int(out[1])

        def tar_x() -> None:
            dest = work / "tarx"
            dest.mkdir()
            import json
            idx = json.loads((layout / "index.json").read_text())
            man = json.loads((layout / "blobs/sha256" / idx["manifests"][0]["digest"].split(":")[1]).read_text())
            flag = {"gzip": "-z", "zstd": "--zstd", "none": ""}[args.compress]
            for d in man["layers"]:
                cmd = ["tar", "-x", "-f", str(layout / "blobs/sha256" / d["digest"].split(":")[1]), "-C", str(dest)]
                if flag:
                    cmd.insert(1, flag)
                subprocess.run(cmd, check=True)
        floor = timed(tar_x)
        umoci = None
        if shutil.which("umoci") and how != "zstd":
            subprocess.run(["umoci", "tag", "--image", str(layout), "latest"], capture_output=True)
            cmd = ["umoci", "unpack", "--image", f"{layout}:latest", str(work / "bundle")]
            if os.geteuid() != 0:
                cmd.insert(2, "--rootless")
            umoci = timed(lambda: subprocess.run(cmd, check=True, capture_output=True))
        again = timed(lambda: oci.open_image(layout, cache=work / "cache"))
        opened = oci.open_image(layout, cache=work / "cache")
        scan_img = timed(lambda: scan(opened.root))
        scan_dir = timed(lambda: scan(rootfs))
        print(f"flatten (sysextant): {ours:6.2f} s   peak RSS {peak_kib / 1024:.0f} MiB")
        print(f"tar -x of the layers: {floor:6.2f} s   (no whiteouts, no digests: the floor)   ratio {ours / floor:.2f}")
        if umoci is not None:
            print(f"umoci unpack:        {umoci:6.2f} s   ratio {ours / umoci:.2f} (target: <= 1)")
        print(f"cached reopen:       {again * 1000:6.1f} ms; scan of the flattened tree {scan_img:.2f} s, "
              f"of the original folder {scan_dir:.2f} s")
        print(f"peak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
