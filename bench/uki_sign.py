"""Build and sign a UKI with a big initrd; report time and peak memory against sbsign.

Usage: python bench/uki_sign.py [INITRD_MIB]   (default 256; needs a kernel, see tests/helpers/kernel.py)

Our build runs in a child process so its peak RSS (VmHWM) is its own; sbsign signs the same
unsigned UKI in the same run as the reference (it reads the whole image into memory).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "helpers"))
from kernel import find_kernel  # noqa: E402

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")

CHILD = r"""
import json, sys, time
from pathlib import Path
from sysextant.core.keys import load_signer
from sysextant.core.formats.uki import build_uki
stub, kernel, initrd, out, key, cert, sign = sys.argv[1:8]
signer = load_signer(Path(key), Path(cert)) if sign == "1" else None
t = time.perf_counter()
res = build_uki(Path(stub), [(".osrel", b"ID=kairos\n"), (".cmdline", b"console=ttyS0"),
                             (".initrd", Path(initrd)), (".linux", Path(kernel))], Path(out), signer=signer)
elapsed = time.perf_counter() - t
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": elapsed, "peak_rss": hwm, "size": res.size}))
"""


PEAK_OF_CHILD = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, capture_output=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""

def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    kernel = find_kernel()
    if kernel is None:
        sys.exit("no kernel: run .ci/fetch-kernel ~/.cache/sysextant")
    from sysextant.core.keys import generate_demo_pair

    with tempfile.TemporaryDirectory(prefix="uki-bench-") as tmp:
        d = Path(tmp)
        key_pem, cert_pem = generate_demo_pair()
        (d / "db.key").write_bytes(key_pem)
        (d / "db.crt").write_bytes(cert_pem)
        block = os.urandom(1 << 20)
        with open(d / "initrd", "wb") as fh:
            for i in range(mib):
                fh.write(block[i:] + block[:i])
        results = {}
        for sign in ("0", "1"):
            out = d / f"uki-{sign}.efi"
            res = subprocess.run([sys.executable, "-c", CHILD, str(STUB), str(kernel), str(d / "initrd"),
                                  str(out), str(d / "db.key"), str(d / "db.crt"), sign],
                                 capture_output=True, text=True, check=True)
            results[sign] = json.loads(res.stdout)
        for sign, label in (("0", "build unsigned"), ("1", "build + sign")):
            r = results[sign]
            print(f"sysextant {label:15s}: {r['size'] / 2**20:7.1f} MiB UKI in {r['seconds']:5.2f} s, "
                  f"peak RSS {r['peak_rss'] / 2**20:6.1f} MiB ({r['peak_rss'] / r['size']:.3f}x UKI size)")
        if shutil.which("sbsign"):
            # sbsign runs under a small Python that reports its child's peak: ru_maxrss carries
            # the forking parent's RSS across fork+exec, and our own children count here too
            t = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", PEAK_OF_CHILD, "sbsign", "--key", str(d / "db.key"),
                                  "--cert", str(d / "db.crt"), "--output", str(d / "sbsign.efi"),
                                  str(d / "uki-0.efi")], check=True, capture_output=True, text=True)
            elapsed = time.perf_counter() - t
            rss = int(res.stdout.split()[-1])
            size = (d / "sbsign.efi").stat().st_size
            print(f"sbsign (sign only)        : {size / 2**20:7.1f} MiB UKI in {elapsed:5.2f} s, "
                  f"peak RSS {rss / 2**20:6.1f} MiB ({rss / size:.3f}x UKI size)")
            ours = results["1"]
            print(f"ratio sysextant(build+sign)/sbsign(sign): time {ours['seconds'] / elapsed:.2f}x, "
                  f"peak RSS {ours['peak_rss'] / rss:.3f}x")


if __name__ == "__main__":
    main()
