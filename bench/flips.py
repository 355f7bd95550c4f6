"""Flip campaigns: single-byte flips judged by ``verify --cert`` and by the real tools.

Usage: python bench/flips.py [N] [--masks 0x01,0x80,0xff] [--stand-in] [--workers 4] [--seed 1]

Four campaigns, each flip XORing one byte with each mask:

- every byte of a signed sysext image's signature-partition PKCS#7 (oracle: ``openssl cms
  -verify ... -CAfile``, plus the kernel parser's rules OpenSSL does not apply);
- every byte of a signed UKI's certificate table, WIN_CERTIFICATE + PKCS#7 (oracle: sbverify
  and osslsigncode, plus the RFC 2315/Authenticode rules neither applies);
- N random flips in the bytes the image's verity tree covers (oracle: veritysetup verify);
- N random flips in the bytes the UKI's Authenticode digest covers (oracle: sbverify and
  osslsigncode).

The oracles and the reasons for their exact invocations are in tests/core/formats/test_signature_flips.py,
which runs the same campaigns with mask 0x01 and a smaller N. For each campaign this prints how
many flips were tried, rejected by both, accepted by both (listed), and the disagreements
(listed); then how many the tools alone accepted and which rule rejected them. Exit status 1
when any flip disagrees. The UKI holds the real kernel when tests/helpers/kernel.py finds one (the
tools then hash ~15 MB per flip), a 64 KiB stand-in with --stand-in.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(TESTS / "helpers"), str(TESTS / "core" / "formats")]  # test_signature_flips
from kernel import find_kernel  # noqa: E402
from test_signature_flips import (  # noqa: E402
    MKFS_EROFS,
    OPENSSL,
    OSSLSIGNCODE,
    SBVERIFY,
    STUB,
    VERITYSETUP,
    ImageCase,
    Outcome,
    UkiCase,
    run_all,
    sample,
)


def report(title: str, outcomes: list[Outcome], seconds: float) -> bool:
    """Print one campaign's counts; True when every flip agrees."""
    both_reject = [o for o in outcomes if o.ours is False and not o.oracle]
    both_accept = [o for o in outcomes if o.ours is True and o.oracle]
    disagree = [o for o in outcomes if not o.agrees]
    print(f"{title}: tried {len(outcomes)}, rejected by both {len(both_reject)}, accepted by both "
          f"{len(both_accept)}, disagreements {len(disagree)}  ({seconds:.1f} s)")
    for o in both_accept:
        print(f"    accepted by both: byte {o.offset} ^ {o.mask:#04x}")
    for o in disagree:
        print(f"    DISAGREE: {o.describe()}")
    by_rule = Counter(o.oracle_why for o in outcomes if o.tools and not o.oracle)
    if by_rule:
        print(f"    the tools alone accepted {sum(o.tools for o in outcomes)}; rules they do not apply "
              f"rejected {sum(by_rule.values())} of those:")
        for why, n in sorted(by_rule.items()):
            print(f"      {n:5d}  {why}")
    return not disagree


def campaign(title: str, judge: Callable[[int, int], Outcome], jobs: list[tuple[int, int]],
             workers: int) -> bool:
    t = time.perf_counter()
    outcomes = run_all(judge, jobs, workers)
    return report(title, outcomes, time.perf_counter() - t)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", nargs="?", type=int, default=200, help="random flips elsewhere, per artefact")
    parser.add_argument("--masks", default="0x01", help="XOR masks, comma separated (default 0x01)")
    parser.add_argument("--stand-in", action="store_true", help="a 64 KiB stand-in kernel, not the real one")
    parser.add_argument("--workers", type=int, default=4, help="flips judged at once (default 4)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random flips")
    args = parser.parse_args()
    masks = [int(m, 0) for m in args.masks.split(",")]
    if not all(0 < m < 256 for m in masks):
        parser.error("masks are 1..255")
    missing = [name for path, name in ((MKFS_EROFS, "mkfs.erofs"), (OPENSSL, "openssl"), (SBVERIFY, "sbverify"),
                                       (OSSLSIGNCODE, "osslsigncode"), (VERITYSETUP, "veritysetup"))
               if path is None]
    if missing or not STUB.is_file():
        sys.exit(f"missing: {', '.join(missing + ([] if STUB.is_file() else [str(STUB)]))}")
    kernel = None if args.stand_in else find_kernel()
    ok = True
    with tempfile.TemporaryDirectory(prefix="flips-") as tmp:
        work = Path(tmp)
        (work / "image").mkdir()
        (work / "uki").mkdir()
        image = ImageCase(work / "image")
        uki = UkiCase(work / "uki", kernel=kernel)
        what = f"{kernel} ({kernel.stat().st_size:,} bytes)" if kernel else "a 64 KiB stand-in kernel"
        print(f"image {image.image.stat().st_size:,} bytes, PKCS#7 {len(image.der)} bytes; UKI "
              f"{len(uki.raw):,} bytes with {what}, certificate table {uki.table_size} bytes; "
              f"masks {', '.join(f'{m:#04x}' for m in masks)}")
        ok &= campaign("image signature PKCS#7, every byte", image.judge_signature,
                       [(i, m) for m in masks for i in range(len(image.der))], args.workers)
        ok &= campaign("UKI certificate table, every byte",
                       lambda o, m: uki.judge_table(o, m, every_tool=True),
                       [(i, m) for m in masks for i in range(uki.table_size)], args.workers)
        spots = sample(image.covered(), args.n, args.seed)
        ok &= campaign(f"image, {len(spots)} random flips in the verity-covered bytes", image.judge_elsewhere,
                       [(o, masks[k % len(masks)]) for k, o in enumerate(spots)], args.workers)
        spots = sample(uki.covered(), args.n, args.seed)
        ok &= campaign(f"UKI, {len(spots)} random flips in the Authenticode-covered bytes",
                       lambda o, m: uki.judge(o, m, every_tool=True),
                       [(o, masks[k % len(masks)]) for k, o in enumerate(spots)], args.workers)
    print("agreement: 100%" if ok else "DISAGREEMENTS found (listed above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
