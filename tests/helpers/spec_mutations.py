"""Structure-aware spec mutations: how an attacker or a careless user breaks a spec.

Shared by ``tests/core/spec/test_spec_fuzz.py`` (driven by hypothesis, which shrinks what it finds) and
``bench/fuzz_spec.py`` (driven by a seeded ``random.Random``, for long runs). Every generator
takes a :class:`Chooser`, whose one primitive is ``below(n)``: hypothesis' draws shrink it
towards 0, so the first entry of every pool below is the simplest choice.

A generated :class:`Case` starts from a valid spec (every key of the README's reference, the
demo's spec, a minimal one) parsed into a small tree that keeps YAML source text, so that it can
carry what PyYAML's emitter never writes: wrong types at any key, unknown and duplicate keys,
merge keys, tags, anchors and aliases (billion laughs included), deep nesting, huge numbers,
escaped surrogates, NUL and control characters, very long strings. Then the text is damaged
(BOM, tabs, extra documents, directives, stray characters, truncation) and, for the file
loader, the bytes (UTF-16, non-UTF-8 bytes).

:func:`check` runs one case through ``loads_spec`` (text) or ``load_spec`` (bytes written to a
file) under a hard time limit and sorts the outcome: accepted, rejected (a :class:`SpecError`
whose problems are each one clear line), or a bug: traceback, hang, unclear problem, or a spec
accepted with text no file system or file can hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import signal
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from sysextant.core.demo import SPEC_TEXT as DEMO_SPEC
from sysextant.core.errors import UserError
from sysextant.core.spec.load import Problem, SpecError, load_spec, loads_spec
from sysextant.core.spec.model import Spec

T = TypeVar("T")


class Chooser(Protocol):
    def below(self, n: int) -> int:
        """A whole number from 0 to n - 1."""


class RandomChooser:
    """Choices from a seeded :class:`random.Random` (the bench)."""

    def __init__(self, rng: object) -> None:
        self.rng = rng

    def below(self, n: int) -> int:
        return self.rng.randrange(n)  # type: ignore[attr-defined]


class DrawChooser:
    """Choices drawn by hypothesis (the tests): ``DrawChooser(draw)`` inside ``st.composite``."""

    def __init__(self, draw: Callable) -> None:
        from hypothesis import strategies as st

        self.draw = draw
        self.st = st

    def below(self, n: int) -> int:
        return self.draw(self.st.integers(0, n - 1)) if n > 1 else 0


def pick(c: Chooser, seq: Sequence[T]) -> T:
    return seq[c.below(len(seq))]


def chance(c: Chooser, percent: int) -> bool:
    """True ``percent`` times in a hundred (False is the shrunk choice)."""
    return c.below(100) >= 100 - percent


# --------------------------------------------------------------------------------------------
# Base specs (all valid)

#: Every key of the README's spec reference, with values that load.
FULL_SPEC = """\
version: 1
os:
  root: rootfs
  kernel: boot/vmlinuz
  exclude: [var/cache, usr/share/doc/*]
uki:
  stub: /usr/lib/systemd/boot/efi/linuxx64.efi.stub
  cmdline: "console=ttyS0 quiet"
  init: /usr/bin/immucore
  compression: zstd
  level: 19
  zstd_mode: auto
  limit: 1GiB
  output: build/uki.efi
  splash: splash.bmp
  os_release: os-release
  uname: 6.1.0-18-amd64
  pcr_key: keys/tpm2-pcr.key
  pcr_cert: keys/tpm2-pcr.pem
signing:
  key: keys/db.key
  cert: keys/db.pem
  passphrase_env: DB_KEY_PASSPHRASE
extensions:
  - name: firmware
    version: "1.0"
    paths: [usr/lib/firmware]
    exclude: [usr/lib/firmware/amdgpu/*]
    filesystem: erofs
    compression: none
    release: {ID: _any, ARCHITECTURE: x86-64}
  - name: tools
    version: 2.1
    paths:
      - opt/tools
      - usr/bin/k3s
    filesystem: squashfs
    compression: zstd
    release: {ID: kairos, VERSION_ID: "1.0", ARCHITECTURE: arm64, SYSEXT_SCOPE: system initrd}
output: build
"""

MINIMAL_SPEC = """\
version: 1
os:
  root: rootfs
extensions:
  - name: firmware
    paths: [usr/lib/firmware]
"""

BASE_SPECS = (MINIMAL_SPEC, FULL_SPEC, DEMO_SPEC)

# --------------------------------------------------------------------------------------------
# What goes in: pools of YAML source text, simplest first

TOP_KEYS = ["version", "os", "uki", "signing", "extensions", "output"]
SECTION_KEYS = ["root", "kernel", "exclude", "stub", "cmdline", "init", "compression", "level",
                "zstd_mode", "limit", "splash", "os_release", "uname", "pcr_key", "pcr_cert", "key", "cert",
                "passphrase_env", "name", "paths", "filesystem", "release", "ID", "ARCHITECTURE",
                "VERSION_ID", "SYSEXT_SCOPE"]
KNOWN_KEYS = TOP_KEYS + SECTION_KEYS

INTS = ["0", "1", "-1", "6", "19", "22", "23", "+1", "-0", "007", "0o17", "0x1F", "0b101", "1_000",
        "1:30", "190:20:30", "0b_", "0x_", "1" + "0" * 400, "-" + "9" * 400, "9" * 5000,
        "0x" + "f" * 4000, "0b" + "1" * 20000, "0" + "7" * 5000, "1" + ":59" * 2500,
        "18446744073709551616", "-9223372036854775809"]
FLOATS = ["1.5", "1.0", "1e308", "1e309", "-1e308", "1.7976931348623157e+308", ".inf", "-.inf",
          "+.Inf", ".nan", ".NaN", "6.", ".5", "1e-400", "1_0.5", "1:30.5", "0.0", "-0.0",
          "1." + "0" * 5000 + "1"]
BOOLS = ["true", "false", "yes", "no", "on", "off", "True", "NO", "y", "n"]
NULLS = ["null", "~", "", "Null", "NULL"]
SIZES = ["1GiB", "0B", "256MiB", "ovmf", "pe-max", "OVMF", "typical ", "5GiB", "4GiB", "4096MiB",
         "4294967297B", "1e3GiB", "9" * 400 + "GiB", "1" + "0" * 5000 + "B", "1.5 GiB", "-1GiB",
         "NaN GiB", "inf GiB", "1 parsecs", "0.0000001GiB", "1." + "0" * 5000 + "1GiB", "800", "800 MiB",
         "1GiB\u3000", "\u0661GiB", "1 KB", "1ki"]
PATHS = ["rootfs", "usr/lib/firmware", "/", ".", "..", "../x", "usr/../..", "~", "~/x", "~root/x",
         "~nosuchuser-zz/x", "usr//lib/./firmware/", "usr/lib/os-release", "usr/lib", "usr/*", "usr/**",
         "usr/[", "usr/[!a]", "*/lib", "opt", "usr", "etc/ssl", "usr/lib/extension-release.d/x",
         "/abs/path", "a" * 5000, "usr/" + "a/" * 2000, "C:\\x", "usr/ lib", "usr/lib/firmware\\",
         "usr/" + "*" * 200 + "x", "usr/" + "[" * 100, "usr/lib/os-*", "./usr/x", "usr/x/.."]
NAMES = ["firmware", "a_b", "a+b", ".x", "-a", "a" * 300, "ä", "Firmware", "a b", "..", "x.y", "0",
         "fw/x", ".#x"]
WORDS = ["zstd", "gzip", "xz", "none", "erofs", "squashfs", "lz4", "lz4hc", "lzo", "auto", "single",
         "parallel", "_any", "x86-64", "amd64", "arm64", "system initrd", "host", "kairos", "Kairos OS",
         "DB_PASS", "hunter 2", "1X", "PATH", "1.0", "1 0", "1.10", "-1", "~1", "6.1 amd64",
         "immucore", "/usr/bin/immucore", "console=ttyS0", "version: 1", "<<", "=", "*", "&", "!"]
#: Written inside double quotes: YAML escapes for what cannot be typed (surrogates, NUL, ...).
ESCAPED = ["\\ud800", "\\udfff", "\\udcff", "\\ud83d\\ude00", "\\U0010ffff", "\\U00110000",
           "\\UFFFFFFFF", "\\U7FFFFFFF", "\\x00", "\\0", "a\\0b", "~\\0/x", "~\\ud800/x", "usr/\\0x",
           "usr/\\ud800", "\\e[2J", "\\x9b", "\\N", "\\_", "\\L", "\\P", "\\a\\b\\v\\f", "\\t",
           "\\/", "\\q", "\\u12", "\\x", "\\U", "a\\nb", "\\r\\n", "\\u202eevil", "\\ufeff",
           "\\ufffe", "\\uffff"]
#: Typed into the file as they are: unicode of every kind, and characters YAML forbids.
RAW_TEXT = ["\u202eevil", "e\u0301\u0301\u0301", "\U0001f600", "\U0001f469\u200d\U0001f469\u200d\U0001f467",
            "\u200b", "\uff52\uff4f\uff4f\uff54", "\u03a9", "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
            "r\u043e\u043et", "\x00", "\x07", "\x1b", "\x7f", "\x85", "\u2028", "\ufeff", "\ud800",
            "\udcff", "\ufffe", "\uffff", "\t", "\r", "\x0b", "\x0c"]
TAGS = ["!!str", "!!int", "!!float", "!!bool", "!!null", "!!binary", "!!map", "!!seq", "!!set",
        "!!omap", "!!pairs", "!!timestamp", "!!merge", "!!value", "!!python/object:os.system",
        "!!python/object/apply:os.system", "!!python/name:os.system", "!!python/tuple", "!custom",
        "!", "!<tag:yaml.org,2002:int>", "!<!>", "!e!x", "!%FF", "!%C3%28",
        "!<tag:sysextant," + "x" * 3000 + ">"]
TAGGED = ["!!int ''", "!!int '-'", "!!int '+'", "!!int abc", "!!int '0x'", "!!int ':'",
          "!!int '1:'", "!!int '0b'", "!!float x", "!!float ''", "!!null x", "!!bool maybe",
          "!!timestamp 2001-13-99", "!!binary '%%%'", "!!binary aGVsbG8=",
          "!!python/object/apply:os.system ['true']", "!!python/object:__main__.X {}",
          "!!set {a, b}", "!!omap [a: 1]", "!custom x", "!<tag:yaml.org,2002:int> 0x",
          "!<tag:yaml.org,2002:int> 1", "! 1", "!!str 1", "!!int 1"]
SCALAR_POOLS: list[list[str]] = [INTS, FLOATS, BOOLS, NULLS, SIZES, PATHS, NAMES, WORDS]
LENGTHS = [1, 10, 100, 1025, 5000, 70_000, 300_000]
DEPTHS = [2, 10, 100, 400, 1000, 3000, 20_000]


def _double_quoted(text: str) -> str:
    """``text`` as a YAML double-quoted scalar (JSON escapes are YAML escapes)."""
    return json.dumps(text, ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# The tree: YAML source text kept per node


@dataclass
class Node:
    kind: str  # "scalar", "seq" or "map"
    text: str = ""  # a scalar exactly as written (quotes, escapes, tag included when raw)
    items: list = field(default_factory=list)  # seq: [Node]; map: [(Node, Node)]
    flow: bool = False
    prefix: str = ""  # anchor and/or tag written before the node

    def copy(self) -> Node:
        if self.kind == "seq":
            return dataclasses.replace(self, items=[x.copy() for x in self.items])
        if self.kind == "map":
            return dataclasses.replace(self, items=[(k.copy(), v.copy()) for k, v in self.items])
        return dataclasses.replace(self, items=[])


def S(text: str) -> Node:  # noqa: N802 - reads like a constructor
    return Node("scalar", text)


def from_yaml(text: str) -> Node:
    """The tree of a (valid) spec text, scalars kept as written."""

    def conv(n: yaml.Node) -> Node:
        if isinstance(n, ScalarNode):
            if n.style == '"':
                return S(_double_quoted(n.value))
            if n.style == "'":
                return S("'" + n.value.replace("'", "''") + "'")
            return S(n.value)
        if isinstance(n, SequenceNode):
            return Node("seq", items=[conv(x) for x in n.value], flow=bool(n.flow_style))
        assert isinstance(n, MappingNode)
        return Node("map", items=[(conv(k), conv(v)) for k, v in n.value], flow=bool(n.flow_style))

    return conv(yaml.compose(text, Loader=yaml.SafeLoader))


def _inline(n: Node, indent: int) -> str:
    """A node in flow style (a scalar's later lines indented past ``indent``)."""
    pre = n.prefix
    if n.kind == "scalar":
        return pre + n.text.replace("\n", "\n" + " " * (indent + 2))
    if n.kind == "seq":
        return pre + "[" + ", ".join(_inline(x, indent) for x in n.items) + "]"
    return pre + "{" + ", ".join(f"{_key(k, indent)}: {_inline(v, indent)}" for k, v in n.items) + "}"


def _key(k: Node, indent: int) -> str:
    return _inline(k, indent) if k.kind == "scalar" else "? " + _inline(k, indent)


def _block(n: Node) -> bool:
    return n.kind != "scalar" and not n.flow and bool(n.items)


def emit(n: Node, indent: int = 0) -> str:
    """YAML text for a node that starts a line at ``indent`` (the document, or a block's body)."""
    pad = " " * indent
    if not _block(n):
        return pad + _inline(n, indent) + "\n"
    out = [pad + n.prefix.strip() + "\n"] if n.prefix else []
    if n.kind == "seq":
        for item in n.items:
            if _block(item) and not item.prefix:
                body = emit(item, indent + 2)
                out.append(pad + "- " + body[indent + 2:])
            elif _block(item):
                out.append(pad + "- " + item.prefix.strip() + "\n" + emit(dataclasses.replace(item, prefix=""), indent + 2))
            else:
                out.append(pad + "- " + _inline(item, indent) + "\n")
        return "".join(out)
    for k, v in n.items:
        head = pad + (_key(k, indent) if k.kind == "scalar" else f"? {_inline(k, indent)}\n{pad}")
        if _block(v):
            tag = (" " + v.prefix.strip()) if v.prefix else ""
            out.append(f"{head}:{tag}\n" + emit(dataclasses.replace(v, prefix=""), indent + 2))
        else:
            out.append(f"{head}: {_inline(v, indent)}\n")
    return "".join(out)


def slots(root: Node) -> list[tuple[Node, int, bool]]:
    """Every place a node sits: (parent, index, is-key) for each map key, map value, list item."""
    out: list[tuple[Node, int, bool]] = []

    def walk(n: Node) -> None:
        if n.kind == "seq":
            for i, x in enumerate(n.items):
                out.append((n, i, False))
                walk(x)
        elif n.kind == "map":
            for i, (k, v) in enumerate(n.items):
                out.append((n, i, True))
                out.append((n, i, False))
                walk(k)
                walk(v)

    walk(root)
    return out


def get(slot: tuple[Node, int, bool]) -> Node:
    parent, i, is_key = slot
    if parent.kind == "seq":
        return parent.items[i]
    return parent.items[i][0 if is_key else 1]


def put(slot: tuple[Node, int, bool], node: Node) -> None:
    parent, i, is_key = slot
    if parent.kind == "seq":
        parent.items[i] = node
    else:
        k, v = parent.items[i]
        parent.items[i] = (node, v) if is_key else (k, node)


def collections(root: Node, kind: str) -> list[Node]:
    found = [root] if root.kind == kind else []
    return found + [get(s) for s in slots(root) if get(s).kind == kind]


# --------------------------------------------------------------------------------------------
# Values


def scalar(c: Chooser) -> Node:
    """A scalar of any kind: typed, quoted, escaped, raw unicode, tagged."""
    how = c.below(9)
    if how == 0:
        return S(pick(c, pick(c, SCALAR_POOLS)))
    if how == 1:  # a word in quotes: the text '1' where a number goes, and so on
        word = pick(c, pick(c, SCALAR_POOLS))
        return S(_double_quoted(word) if chance(c, 50) else "'" + word.replace("'", "''") + "'")
    if how == 2:
        return S('"' + pick(c, ESCAPED) + '"')
    if how == 3:
        base = pick(c, pick(c, [PATHS, NAMES, WORDS]))
        raw = pick(c, RAW_TEXT)
        at = c.below(len(base) + 1)
        return S(base[:at] + raw + base[at:])
    if how == 4:
        return S(pick(c, TAGGED))
    if how == 5:
        return long_string(c)
    if how == 6:
        return S('"' + pick(c, ESCAPED) + pick(c, PATHS[:5]) + '"')
    if how == 7:  # a block scalar, the way a long cmdline is written
        style = pick(c, ["|", ">", "|-", ">+", "|2", ">-9"])
        return S(style + "\n" + pick(c, WORDS) + "\n" + pick(c, PATHS))
    return S(pick(c, KNOWN_KEYS))


def long_string(c: Chooser) -> Node:
    n = pick(c, LENGTHS)
    unit = pick(c, ["a", "usr/", "\u00e9", "\U0001f600", "a b ", "\\0", "\\ud800"])
    text = (unit * (n // len(unit) + 1))[:n]
    if "\\" in unit:
        return S('"' + text.rstrip("\\") + '"')
    return S(pick(c, ["{}", "'{}'", '"{}"', "usr/{}"]).format(text))


def nesting(c: Chooser) -> Node:
    """Deeply nested flow collections, closed or not."""
    depth = pick(c, DEPTHS)
    opener, closer = pick(c, [("[", "]"), ("{a: ", "}"), ("[{a: ", "}]"), ("{? ", ": x}")])
    closed = chance(c, 60)
    return S(opener * depth + ("x" + closer * depth if closed else ""))


def value(c: Chooser, depth: int = 0) -> Node:
    """Any value: a scalar, a list, a mapping, nested a little; wrong types for every key."""
    how = c.below(8 if depth < 3 else 2)
    if how <= 1:
        return scalar(c)
    if how == 2:
        return Node("seq", items=[], flow=True)
    if how == 3:
        return Node("map", items=[], flow=True)
    if how == 4:
        return Node("seq", items=[value(c, depth + 1) for _ in range(c.below(4) + 1)], flow=chance(c, 50))
    if how == 5:
        return Node("map", items=[(key(c), value(c, depth + 1)) for _ in range(c.below(4) + 1)],
                    flow=chance(c, 50))
    if how == 6:
        return nesting(c)
    return S(pick(c, ["[]", "{}", "[[]]", "{{}: x}", "[x, [y, {z: 1}]]", "- a", "- a\n- b", "a: b", "? a"]))


def key(c: Chooser) -> Node:
    """A key: known, misspelled, typed, unicode, escaped, long, complex, tagged."""
    how = c.below(8)
    if how == 0:
        return S(pick(c, KNOWN_KEYS))
    if how == 1:
        word = pick(c, KNOWN_KEYS)
        variant = pick(c, [word.upper(), word.title(), word[:-1], word + "s", word + " ", " " + word,
                           word.replace("o", "\u043e"), word + "\u200b", word + "\u0301", "\u202e" + word])
        return S(_double_quoted(variant) if variant != variant.strip() else variant)
    if how == 2:
        return S(pick(c, ["x", "0", "1", "-1", "1.5", "true", "null", "~", "''", "<<", "=", "?", "- x",
                          "2001-12-14", "0x1", ".inf"]))
    if how == 3:
        return S('"' + pick(c, ESCAPED) + '"')
    if how == 4:
        return S(pick(c, RAW_TEXT) + pick(c, KNOWN_KEYS))
    if how == 5:
        n = Node("seq" if chance(c, 50) else "map", flow=True)
        n.items = [scalar(c)] if n.kind == "seq" else [(S("a"), scalar(c))]
        return n
    if how == 6:
        return S(pick(c, TAGS) + " " + pick(c, KNOWN_KEYS))
    return S("k" * pick(c, LENGTHS))


# --------------------------------------------------------------------------------------------
# Mutations of the tree


def _random_slot(c: Chooser, root: Node, *, keys: bool = False) -> tuple[Node, int, bool] | None:
    every = [s for s in slots(root) if s[2] == keys]
    return pick(c, every) if every else None


def m_wrong_value(c: Chooser, root: Node) -> None:
    slot = _random_slot(c, root)
    if slot:
        put(slot, value(c))


def m_wrong_type(c: Chooser, root: Node) -> None:
    """The same key given an int, float, bool, null, list, mapping or text instead."""
    slot = _random_slot(c, root)
    if not slot:
        return
    kind = c.below(7)
    pool = [INTS, FLOATS, BOOLS, NULLS][kind] if kind < 4 else None
    if pool is not None:
        put(slot, S(pick(c, pool)))
    elif kind == 4:
        put(slot, Node("seq", items=[get(slot)], flow=chance(c, 50)))
    elif kind == 5:
        put(slot, Node("map", items=[(S(pick(c, KNOWN_KEYS)), get(slot))], flow=chance(c, 50)))
    else:
        put(slot, S(_double_quoted(pick(c, pick(c, SCALAR_POOLS)))))


def m_unknown_key(c: Chooser, root: Node) -> None:
    maps = collections(root, "map")
    target = pick(c, maps)
    target.items.insert(c.below(len(target.items) + 1), (key(c), value(c)))


def m_duplicate_key(c: Chooser, root: Node) -> None:
    maps = [m for m in collections(root, "map") if m.items]
    if maps:
        target = pick(c, maps)
        k, v = pick(c, target.items)
        target.items.insert(c.below(len(target.items) + 1), (k.copy(), value(c) if chance(c, 50) else v.copy()))


def m_merge_key(c: Chooser, root: Node) -> None:
    maps = collections(root, "map")
    target = pick(c, maps)
    merged = pick(c, [Node("map", items=[(S(pick(c, KNOWN_KEYS)), scalar(c))], flow=True),
                      Node("seq", items=[Node("map", items=[(S("name"), S("x"))], flow=True)], flow=True),
                      S("*m"), S("x")])
    target.items.insert(c.below(len(target.items) + 1), (S(pick(c, ["<<", "!!merge <<", "'<<'"])), merged))


def m_tag(c: Chooser, root: Node) -> None:
    slot = _random_slot(c, root, keys=chance(c, 30))
    if slot:
        n = get(slot)
        n.prefix = pick(c, TAGS) + " " + n.prefix


def m_anchor_alias(c: Chooser, root: Node) -> None:
    every = slots(root)
    if not every:
        return
    name = pick(c, ["a", "b", "x" * 300, "undefined"])
    if name != "undefined":
        get(pick(c, every)).prefix += f"&{name} "
    put(pick(c, every), S(f"*{name}"))


def m_alias_bomb(c: Chooser, root: Node) -> None:
    """Billion laughs: each level lists the previous one ``width`` times, ``levels`` deep."""
    if root.kind != "map":
        return
    levels, width = pick(c, [(3, 3), (9, 9), (12, 10), (30, 2)])
    flow = chance(c, 50)
    entries: list[tuple[Node, Node]] = [(S("lol0"), Node("seq", items=[S("lol")] * width, flow=True, prefix="&l0 "))]
    for level in range(1, levels + 1):
        entries.append((S(f"lol{level}"), Node("seq", items=[S(f"*l{level - 1}")] * width, flow=flow,
                                               prefix=f"&l{level} ")))
    at = c.below(len(root.items) + 1)
    root.items[at:at] = entries
    if chance(c, 70):  # and use it where the reader looks
        slot = _random_slot(c, root)
        if slot:
            put(slot, S(f"*l{levels}"))


def m_alias_share(c: Chooser, root: Node) -> None:
    """One extension with many paths, anchored, and aliased as many more extensions: a reader that
    follows aliases reads it once per alias."""
    exts = next((v for k, v in root.items if k.text == "extensions" and v.kind == "seq" and v.items), None) \
        if root.kind == "map" else None
    if exts is None or exts.items[0].kind != "map":
        return
    first = exts.items[0]
    first.prefix = "&e "
    paths = next((v for k, v in first.items if k.text == "paths" and v.kind == "seq"), None)
    if paths is not None and paths.items:
        paths.items.extend(S(f"usr/p{i}") for i in range(pick(c, [10, 1000, 5000])))
    exts.items.extend(S("*e") for _ in range(pick(c, [10, 1000, 5000])))


def m_nesting(c: Chooser, root: Node) -> None:
    slot = _random_slot(c, root)
    if slot:
        put(slot, nesting(c))


def m_delete(c: Chooser, root: Node) -> None:
    lists = [n for n in collections(root, "map") + collections(root, "seq") if n.items]
    if lists:
        target = pick(c, lists)
        del target.items[c.below(len(target.items))]


def m_long(c: Chooser, root: Node) -> None:
    slot = _random_slot(c, root, keys=chance(c, 20))
    if slot:
        put(slot, long_string(c))


def m_unicode_key(c: Chooser, root: Node) -> None:
    slot = _random_slot(c, root, keys=True)
    if slot:
        put(slot, key(c))


def m_flip_style(c: Chooser, root: Node) -> None:
    every = [n for n in collections(root, "map") + collections(root, "seq") if n is not root]
    if every:
        n = pick(c, every)
        n.flow = not n.flow


def m_grow(c: Chooser, root: Node) -> None:
    """Many items: a long list of paths or many extensions (the reader's work per item)."""
    lists = collections(root, "seq")
    if lists:
        target = pick(c, lists)
        if target.items:
            count = pick(c, [10, 200, 2000, 5000])
            target.items.extend(target.items[c.below(len(target.items))].copy() for _ in range(count))


#: What each key is checked as, for :func:`m_key_aware` (list keys get one item changed).
PATH_ESCAPES = ['"~\\0/x"', '"~\\ud800/x"', '"usr/\\0x"', '"usr/\\ud800"', '"\\udcff"', '"\\0"',
                '"~\\U0001F600"', '"\\ud83d\\ude00"', '"usr/a\\nb"', '"usr/\\x1b[2J"']
INT_TAGGED = [t for t in TAGGED if t.startswith(("!!int", "!<tag:yaml.org,2002:int>"))]
_PATHS = PATHS + PATH_ESCAPES
KEY_POOLS: dict[str, list[str]] = {
    "version": INTS + FLOATS + INT_TAGGED + ['"1"', "'1'", "1.0", "v1", "!!int 1"],
    "level": INTS + FLOATS + INT_TAGGED + BOOLS,
    "limit": SIZES + INTS[:8],
    "name": NAMES + PATH_ESCAPES, "ID": WORDS + PATH_ESCAPES, "ARCHITECTURE": WORDS, "VERSION_ID": WORDS + FLOATS,
    "SYSEXT_SCOPE": WORDS, "compression": WORDS, "filesystem": WORDS, "zstd_mode": WORDS,
    "passphrase_env": WORDS + PATH_ESCAPES,
    "cmdline": WORDS + ['"' + e + '"' for e in ESCAPED], "uname": WORDS + ['"' + e + '"' for e in ESCAPED],
    "init": _PATHS,
    **{k: _PATHS for k in ("root", "kernel", "stub", "output", "splash", "os_release", "pcr_key", "pcr_cert",
                           "key", "cert", "paths", "exclude")},
}


def m_key_aware(c: Chooser, root: Node) -> None:
    """A value made for the key it lands on: numbers for a level, sizes for a limit, paths with a
    NUL or a surrogate for a path, and so on (a uniform choice would rarely meet them)."""
    entries = [(m, i) for m in collections(root, "map") for i, (k, _) in enumerate(m.items)
               if k.kind == "scalar" and k.text in KEY_POOLS]
    if not entries:
        return
    m, i = pick(c, entries)
    k, v = m.items[i]
    text = pick(c, KEY_POOLS[k.text])
    if chance(c, 15):
        text = pick(c, TAGS) + " " + text
    new = S(text)
    if v.kind == "seq" and v.items and chance(c, 70):
        v.items[c.below(len(v.items))] = new
    else:
        m.items[i] = (k, new)


MUTATIONS: list[Callable[[Chooser, Node], None]] = [
    m_key_aware, m_key_aware, m_key_aware,
    m_wrong_value, m_wrong_type, m_unknown_key, m_duplicate_key, m_merge_key, m_tag, m_anchor_alias,
    m_alias_bomb, m_alias_share, m_nesting, m_delete, m_long, m_unicode_key, m_flip_style, m_grow,
]


# --------------------------------------------------------------------------------------------
# Damage to the text and the bytes


def t_bom(c: Chooser, text: str) -> str:
    return "\ufeff" + text if chance(c, 70) else text.replace("\n", "\n\ufeff", 1)


def t_documents(c: Chooser, text: str) -> str:
    return pick(c, ["---\n" + text, text + "---\n" + text, text + "...\n", text + "---\n",
                    text + "--- |\n  x\n", "--- " + text, text + "\n...\n---\nversion: 1\n"])


def t_directive(c: Chooser, text: str) -> str:
    head = pick(c, ["%YAML 1.1\n", "%YAML 1.2\n", "%YAML 2.0\n", "%YAML 1.1\n%YAML 1.1\n",
                    "%YAML 1." + "9" * 5000 + "\n", "%YAML " + "1" * 5000 + ".1\n", "%TAG ! tag:x,2000:\n",
                    "%TAG !e! tag:e,2000:\n", "%TAG !e! !%FF\n", "%FOO bar\n", "%\n"])
    return head + pick(c, ["---\n", ""]) + text


def t_line_ends(c: Chooser, text: str) -> str:
    return text.replace("\n", pick(c, ["\r\n", "\r", "\x85", "\u2028", "\n\n"]))


def t_tabs(c: Chooser, text: str) -> str:
    lines = text.split("\n")
    i = c.below(len(lines))
    lines[i] = pick(c, ["\t", "  \t", "\t "]) + lines[i].lstrip(" ") if chance(c, 60) else lines[i].replace(": ", ":\t", 1)
    return "\n".join(lines)


CHARS = ["\x00", "\x07", "\x1b", "\t", "\ufeff", "\ud800", "\x85", "\u2028", '"', "'", "[", "{", "]",
         "}", ":", "#", "&", "*", "!", "|", ">", "%", "@", "`", "?", "-", ",", "\\", " ", "\n"]


def t_char(c: Chooser, text: str) -> str:
    at = c.below(len(text) + 1)
    return text[:at] + pick(c, CHARS) * pick(c, [1, 2, 50]) + text[at:]


def t_cut(c: Chooser, text: str) -> str:
    at = c.below(len(text) + 1)
    if chance(c, 50):
        return text[:at]
    return text[:at] + text[at + c.below(40) + 1:]


def t_repeat_line(c: Chooser, text: str) -> str:
    lines = text.split("\n")
    i = c.below(len(lines))
    lines[i:i] = [lines[i]] * pick(c, [1, 2, 100])
    return "\n".join(lines)


def t_indent(c: Chooser, text: str) -> str:
    lines = text.split("\n")
    i = c.below(len(lines))
    lines[i] = (" " * pick(c, [1, 3, 8]) + lines[i]) if chance(c, 50) else lines[i].lstrip()
    return "\n".join(lines)


TEXT_DAMAGE: list[Callable[[Chooser, str], str]] = [
    t_bom, t_documents, t_directive, t_line_ends, t_tabs, t_char, t_cut, t_repeat_line, t_indent,
]

#: Whole files that are no spec at all.
ODD_FILES = ["", "\n", "   \n\t\n", "# only a comment\n", "#" * 70_000, "# a\n# b\n" * 1000, "---\n", "...\n",
             "--- |\n  text\n", "~\n", "null\n", "[]\n", "{}\n", "version: 1\n", "- a\n- b\n", "just words",
             "\ufeff", "\ufeff# comment\n", "&a [*a]\n", "*a\n", "!!python/object/apply:os.system ['true']\n",
             "%YAML 1.1\n", "---\n---\n", "? \n", ": \n", "-\n", "'\n", '"\n', "[\n", "{\n", "|\n", ">\n",
             "version: 1\nos: {root: r}\n" * 2, "\x00", "\ud800", "\t"]


def b_encode(c: Chooser, text: str) -> bytes:
    """The text in another encoding, or UTF-8 with bytes that are not UTF-8."""
    how = c.below(8)
    if how == 0:
        return text.encode("utf-8", "surrogatepass")
    if how == 1:
        return b"\xef\xbb\xbf" + text.encode("utf-8", "surrogatepass")
    if how == 2:
        return text.encode(pick(c, ["utf-16", "utf-16-le", "utf-16-be", "utf-32"]), "surrogatepass")
    if how == 3:
        return text.encode("latin-1", "replace")
    data = text.encode("utf-8", "surrogatepass")
    junk = pick(c, [b"\xff", b"\xfe", b"\xc3", b"\xed\xa0\x80", b"\xc0\x80", b"\xf8\x88\x80\x80\x80",
                    b"\xf4\x90\x80\x80", b"\x00", b"\x80" * 3, b"\xe2\x80"])
    at = c.below(len(data) + 1)
    return data[:at] + junk + data[at:]


# --------------------------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    text: str | None  # for loads_spec
    data: bytes | None = None  # for load_spec (a file)
    ops: list[str] = field(default_factory=list)

    def describe(self, width: int = 300) -> str:
        body = self.text if self.text is not None else self.data
        shown = repr(body)
        if len(shown) > width:
            shown = shown[: width // 2] + f" ...[{len(shown)} chars]... " + shown[-width // 2:]
        return f"ops={'+'.join(self.ops) or 'none'} input={shown}"


def make_case(c: Chooser, *, files: bool = True) -> Case:
    """One fuzzed spec: mostly a damaged valid spec, sometimes an odd whole file; as text, or as
    bytes for the file loader when ``files``."""
    ops: list[str] = []
    if chance(c, 6):
        text = pick(c, ODD_FILES)
        ops.append("odd-file")
    else:
        root = from_yaml(pick(c, BASE_SPECS))
        for _ in range(c.below(4) + 1):
            mutate = pick(c, MUTATIONS)
            mutate(c, root)
            ops.append(mutate.__name__)
        text = emit(root)
        for _ in range(c.below(3) if chance(c, 35) else 0):
            damage = pick(c, TEXT_DAMAGE)
            text = damage(c, text)
            ops.append(damage.__name__)
    if files and chance(c, 15):
        ops.append("as-file")
        return Case(None, b_encode(c, text), ops)
    return Case(text, None, ops)


# --------------------------------------------------------------------------------------------
# Running one case


class Hang(BaseException):
    """Raised by the hard time limit; a BaseException so no ``except Exception`` swallows it."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in the running code after ``seconds`` of wall-clock time. A timer
    already set (pytest-timeout's, say) is put back afterwards, less the time spent here."""

    def expired(signum: int, frame: object) -> None:
        raise Hang(f"still running after {seconds} s")

    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, expired)
    outer, _interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 0.001))


@dataclass
class Outcome:
    kind: str  # accepted, rejected, traceback, hang, unclear, unsafe
    seconds: float
    detail: str = ""
    error: BaseException | None = None

    @property
    def bug(self) -> bool:
        return self.kind not in ("accepted", "rejected")


#: A problem line longer than this is not one clear line (user values are shortened in messages).
MAX_PROBLEM_CHARS = 600
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def problem_flaw(p: Problem, path: Path) -> str | None:
    """Why ``p`` is not one clear problem line naming where it is, or None."""
    line = str(p)
    if not isinstance(p, Problem):
        return f"not a Problem: {p!r}"
    if not line.startswith(str(path)):
        return f"does not start with the file name: {line[:200]!r}"
    if p.line < 0 or p.column < 0 or (p.line == 0) != (p.column == 0):
        return f"bad position {p.line}:{p.column}: {line[:200]!r}"
    if _CONTROL.search(line) or any(0xD800 <= ord(ch) <= 0xDFFF for ch in line):
        return f"control character or surrogate in the problem line: {line[:200]!r}"
    if len(line) > MAX_PROBLEM_CHARS + len(str(path)):
        return f"problem line of {len(line)} characters: {line[:200]!r}..."
    return None


def _texts_of(obj: object) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, Path):
        yield str(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _texts_of(k)
            yield from _texts_of(v)
    elif isinstance(obj, list | tuple):
        for x in obj:
            yield from _texts_of(x)
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            if f.name != "locations":
                yield from _texts_of(getattr(obj, f.name))


def spec_flaw(spec: Spec) -> str | None:
    """Why an accepted spec would break what uses it (a path or text no file system or file can
    hold), or None."""
    for text in _texts_of(spec):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return f"accepted text that is not UTF-8 (a lone surrogate): {text[:80]!r}"
        if "\0" in text:
            return f"accepted text with a NUL: {text[:80]!r}"
    return None


def check(case: Case, folder: Path, *, hard_limit: float = 30.0, slow: float = 2.0) -> Outcome:
    """Run ``case`` through the loader and sort the outcome (see the module docstring)."""
    path = folder / "spec.yaml"
    if case.data is not None:
        path.write_bytes(case.data)
    start = time.monotonic()
    try:
        with time_limit(hard_limit):
            spec = loads_spec(case.text, path) if case.text is not None else load_spec(path)
    except Hang:
        return Outcome("hang", time.monotonic() - start, f"no answer within {hard_limit} s")
    except SpecError as err:
        seconds = time.monotonic() - start
        if seconds > slow:
            return Outcome("hang", seconds, f"SpecError after {seconds:.1f} s")
        if not err.problems:
            return Outcome("unclear", seconds, "SpecError without problems", err)
        for p in err.problems:
            flaw = problem_flaw(p, path)
            if flaw:
                return Outcome("unclear", seconds, flaw, err)
        return Outcome("rejected", seconds, str(err.problems[0]), err)
    except UserError as err:
        return Outcome("rejected", time.monotonic() - start, str(err), err)
    except Exception as err:  # noqa: BLE001 - any other exception is the bug being hunted
        tb = "".join(traceback.format_exception(err))
        return Outcome("traceback", time.monotonic() - start, tb, err)
    seconds = time.monotonic() - start
    if seconds > slow:
        return Outcome("hang", seconds, f"accepted after {seconds:.1f} s")
    flaw = spec_flaw(spec)
    if flaw:
        return Outcome("unsafe", seconds, flaw)
    return Outcome("accepted", seconds)
