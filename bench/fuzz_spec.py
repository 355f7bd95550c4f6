"""Spec fuzzing at scale: N structure-aware mutated specs through the spec loader.

Usage: ``python bench/fuzz_spec.py [N] [--seed 1] [--hang 2] [--limit 30] [--show 1]``

The specs come from the mutation functions in ``tests/helpers/spec_mutations.py`` (the ones
``tests/core/spec/test_spec_fuzz.py`` drives with hypothesis), here driven by a seeded random generator
so the run is long and reproducible without hypothesis' limits: valid specs with wrong types at
every key, unknown and duplicate keys, merge keys, tags, anchors and alias bombs, deep nesting,
huge numbers, unicode and control characters, long strings, damaged text (BOM, tabs, extra
documents, directives) and, through the file loader, UTF-16 and bytes that are not UTF-8.

Prints how many were tried, accepted (a valid spec), rejected with clear problems, and the bugs:
tracebacks (each exception type with its count and one example), hangs (more than ``--hang``
seconds; ``--limit`` stops a case for good), unclear problems (not one line naming file, line
and column) and unsafe accepts (a spec holding a lone surrogate or a NUL). Exit status 1 on any
traceback or hang, or any unclear or unsafe outcome.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "helpers"))
from spec_mutations import Case, Outcome, RandomChooser, check, make_case  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=12000, help="how many specs (default 12000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hang", type=float, default=2.0, help="seconds after which a case counts as a hang")
    parser.add_argument("--limit", type=float, default=30.0, help="seconds after which a case is stopped")
    parser.add_argument("--show", type=int, default=1, help="examples shown per kind of bug")
    args = parser.parse_args(argv)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    rng = random.Random(args.seed)
    chooser = RandomChooser(rng)
    counts: Counter[str] = Counter()
    examples: dict[str, list[tuple[Case, Outcome]]] = defaultdict(list)
    per_type: Counter[str] = Counter()
    slowest = (0.0, None)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sysextant-fuzz-") as tmp:
        for i in range(args.n):
            case = make_case(chooser)
            outcome = check(case, Path(tmp), hard_limit=args.limit, slow=args.hang)
            counts[outcome.kind] += 1
            if outcome.seconds > slowest[0]:
                slowest = (outcome.seconds, case)
            if outcome.bug:
                label = outcome.kind
                if outcome.kind == "traceback" and outcome.error is not None:
                    label = f"traceback {type(outcome.error).__name__}: {str(outcome.error)[:80]}"
                    per_type[type(outcome.error).__name__] += 1
                if len(examples[label]) < args.show:
                    examples[label].append((case, outcome))
                else:
                    examples.setdefault(label, [])
                counts_label = f"#{label}"
                counts[counts_label] += 1
            if (i + 1) % 1000 == 0:
                print(f"  ... {i + 1} tried, {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    seconds = time.monotonic() - start

    tried = args.n
    print(f"spec fuzz (seed {args.seed}): tried {tried}, accepted {counts['accepted']}, "
          f"rejected with a clear problem {counts['rejected']}, tracebacks {counts['traceback']}, "
          f"hangs (> {args.hang:g} s) {counts['hang']}, unclear problems {counts['unclear']}, "
          f"unsafe accepts {counts['unsafe']}  ({seconds:.1f} s, slowest case {slowest[0]:.2f} s)")
    if slowest[1] is not None:
        print(f"slowest case: {slowest[1].describe(160)}")
    if per_type:
        print("traceback exception types: " + ", ".join(f"{t} x{n}" for t, n in per_type.most_common()))
    for label, shown in sorted(examples.items()):
        print(f"\n== {label}  (x{counts['#' + label]})")
        for case, outcome in shown:
            print(f"   {case.describe()}")
            detail = outcome.detail.strip().splitlines()
            for line in detail[-6:] if outcome.kind == "traceback" else detail[:3]:
                print(f"     {line[:300]}")
    bad = counts["traceback"] + counts["hang"] + counts["unclear"] + counts["unsafe"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
