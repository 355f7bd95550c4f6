"""Structure-aware spec fuzzing: whatever an attacker or a careless user writes, the spec reader
answers with a Spec or a SpecError of clear one-line problems, quickly; never a traceback, never
a hang.

The generators live in ``spec_mutations.py`` (shared with ``bench/fuzz_spec.py``, which runs
thousands more): valid specs mutated with wrong types at every key, unknown and duplicate keys,
merge keys, tags, anchors and alias bombs, deep nesting, huge numbers, unicode, NUL and control
characters, long strings; damaged text (BOM, tabs, extra documents, directives); other
encodings through the file loader. Hypothesis drives them derandomized, so CI is reproducible,
and shrinks whatever it finds. The explicit tests below pin the worst shapes with a wall-clock
limit, each bug the fuzzing found, and the command line's answer to them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_mutations import (
    BASE_SPECS,
    Case,
    DrawChooser,
    check,
    emit,
    from_yaml,
    make_case,
    problem_flaw,
    time_limit,
)

from sysextant.core.spec.load import MAX_SPEC_BYTES, MAX_SPEC_TOKENS, SpecError, loads_spec

SPEC = Path("/srv/proj/spec.yaml")
#: Per example: a hypothesis deadline (a slow example fails the test) and a hard stop.
DEADLINE = timedelta(seconds=5)
HARD_LIMIT = 20.0
FUZZ = settings(max_examples=220, deadline=DEADLINE, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])


@st.composite
def cases(draw: st.DrawFn, files: bool = False) -> Case:
    return make_case(DrawChooser(draw), files=files)


@st.composite
def file_cases(draw: st.DrawFn) -> Case:
    case = make_case(DrawChooser(draw), files=True)
    if case.data is None:
        case = Case(None, case.text.encode("utf-8", "surrogatepass"), [*case.ops, "as-file"])
    return case


def assert_sound(case: Case, folder: Path) -> None:
    outcome = check(case, folder, hard_limit=HARD_LIMIT, slow=DEADLINE.total_seconds())
    assert not outcome.bug, f"{outcome.kind} ({outcome.seconds:.2f} s): {outcome.detail}\n{case.describe()}"


def test_the_mutations_start_from_valid_specs() -> None:
    for text in BASE_SPECS:
        spec = loads_spec(text, SPEC)
        again = loads_spec(emit(from_yaml(text)), SPEC)  # the tree writes the same spec back
        assert (again.os, again.uki, again.signing, again.extensions, again.output) == (
            spec.os, spec.uki, spec.signing, spec.extensions, spec.output)


@FUZZ
@given(cases())
def test_fuzzed_specs_load_or_fail_with_clear_problems(tmp_path_factory: pytest.TempPathFactory, case: Case) -> None:
    assert_sound(case, tmp_path_factory.mktemp("fuzz"))


@settings(FUZZ, max_examples=80)
@given(file_cases())
def test_fuzzed_spec_files_load_or_fail_with_clear_problems(tmp_path_factory: pytest.TempPathFactory,
                                                             case: Case) -> None:
    assert_sound(case, tmp_path_factory.mktemp("fuzz"))


# ---------------------------------------------------------------------------------------------
# The worst shapes, each under a wall-clock limit


def billion_laughs(levels: int = 10, width: int = 10, *, use: str = "root") -> str:
    lines = ["version: 1", "lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"lol{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    lines += ["os:", f"  root: *l{levels}" if use == "root" else "  root: rootfs",
              "extensions:" if use == "extensions" else "extensions: []"]
    if use == "extensions":
        lines += [f"  - *l{levels}"] * 3
    return "\n".join(lines) + "\n"


def problems_within(text: str, seconds: float = 3.0) -> list:
    start = time.monotonic()
    with time_limit(10 * seconds), pytest.raises(SpecError) as info:
        loads_spec(text, SPEC)
    elapsed = time.monotonic() - start
    assert elapsed < seconds, f"took {elapsed:.2f} s"
    for p in info.value.problems:
        assert problem_flaw(p, SPEC) is None, problem_flaw(p, SPEC)
    return info.value.problems


@pytest.mark.parametrize("use", ["root", "extensions"])
def test_alias_bomb_is_refused_not_expanded(use: str) -> None:
    """10**10 strings if expanded; the aliases are refused and never read twice."""
    found = problems_within(billion_laughs(use=use))
    assert any("YAML alias '*l10' is not supported" in p.message for p in found)
    assert any("YAML anchor '&l0' is not supported" in p.message for p in found)


def test_alias_sharing_makes_no_quadratic_read() -> None:
    """Thousands of extensions aliasing one extension with thousands of paths: the reader reads
    the anchored extension once, not once per alias."""
    paths = "\n".join(f"      - usr/p{i}" for i in range(4000))
    items = "\n".join(["  - *e"] * 4000)
    text = f"version: 1\nos: {{root: r}}\nextensions:\n  - &e\n    name: x\n    paths:\n{paths}\n{items}\n"
    found = problems_within(text)
    assert len([p for p in found if "alias" in p.message]) == 4000


@pytest.mark.parametrize("text", [
    "[" * 200_000,
    "a: " + "[" * 200_000,
    "{a: " * 100_000,
    "a: " + "[{a: " * 50_000 + "x" + "}]" * 50_000,
    "".join(" " * i + "- \n" for i in range(300)),  # block nesting by indentation
    "".join(" " * i + "a:\n" for i in range(300)),
], ids=["open-brackets", "open-brackets-in-value", "open-braces", "balanced", "block-list", "block-mapping"])
def test_deep_nesting_is_refused_fast(text: str) -> None:
    assert len(text) <= MAX_SPEC_BYTES
    found = problems_within(text)
    assert any("nested far too deeply" in p.message for p in found), found


def test_too_many_tokens_is_refused_fast() -> None:
    text = "version: 1\nos: {root: r}\nx: [" + "a," * (MAX_SPEC_BYTES // 2 - 20) + "]\n"
    found = problems_within(text)
    assert any(f"more than {MAX_SPEC_TOKENS} YAML tokens" in p.message for p in found)


@pytest.mark.parametrize("limit", ["1" + " " * 100_000 + "!", "1" + " " * 100_000 + "GiB!"])
def test_size_with_many_spaces_is_read_in_linear_time(limit: str) -> None:
    found = problems_within(f"version: 1\nos: {{root: r}}\nuki: {{limit: '{limit}'}}\n", seconds=1.0)
    assert any("cannot read size" in p.message and "characters)" in p.message for p in found)


# ---------------------------------------------------------------------------------------------
# The command line: one error and exit status 2 for the nastiest inputs, never a traceback

CLI = [sys.executable, "-m", "sysextant.tui.cli"]

NASTY: dict[str, bytes] = {
    "alias-bomb": billion_laughs().encode(),
    "deep-nesting": b"a: " + b"[" * 200_000,
    "huge-hex-level": b"version: 1\nos: {root: r}\nuki: {level: 0x" + b"f" * 4000 + b"}\n",
    "escape-beyond-unicode": b'version: 1\nos: {root: "\\UFFFFFFFF"}\n',
    "surrogate-root": b'version: 1\nos: {root: "\\ud800"}\n',
    "yaml-directive-digits": b"%YAML 1." + b"9" * 5000 + b"\n---\nversion: 1\n",
    "empty-int-tag": b"version: 1\nos: {root: r}\nuki: {level: !!int ''}\n",
    "utf16": "version: 1\nos: {root: r}\n".encode("utf-16"),
    "too-many-tokens": b"version: 1\nos: {root: r}\nx: [" + b"a," * 100_000 + b"]\n",
    "python-object": b"!!python/object/apply:os.system ['echo pwned']\n",
}


def test_plan_answers_nasty_specs_with_one_error(tmp_path: Path) -> None:
    """Each in its own process under a wall-clock limit (a signal cannot stop a loop in C code,
    like the size regex that once took hours)."""
    procs = {}
    try:
        for name, data in NASTY.items():
            spec = tmp_path / f"{name}.yaml"
            spec.write_bytes(data)
            procs[name] = (spec, subprocess.Popen([*CLI, "plan", str(spec)], stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE, text=True))
        for name, (spec, proc) in procs.items():
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 2, (name, err[-2000:])
            assert "Traceback" not in err and not out, (name, err[-2000:])
            assert err.startswith(f"sysextant: error: {spec}") and err.count("sysextant: error:") == 1, (name, err[:500])
            for line in err.splitlines():
                assert len(line) < 700, (name, line[:300])
    finally:
        for _spec, proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
