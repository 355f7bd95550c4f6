"""The spec file as located YAML nodes: read with limits, every value with its line and column.

The file is composed with PyYAML (``yaml.compose`` on a SafeLoader) into a node tree, so every
key and value keeps its line and column; :class:`_Reader` walks that tree for
:mod:`.load`, collecting *all* problems (:class:`Problem`) before one :class:`SpecError` is
raised. Anchors, aliases and tags are noted, never honoured; the size, token and depth limits
bound the time any file can take to read. Nothing a user can type raises anything else.
"""

from __future__ import annotations

import contextlib
import difflib
import posixpath
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import UserError

#: A spec is a small hand-written file (the demo's is 2 KiB); anything bigger is almost surely the
#: wrong file. PyYAML's pure-Python reader (the one that keeps every line and column) takes up to
#: about 3 s a MiB (quoted text of short lines), so this and the limits below also bound the time
#: any spec can take to read: about 1.5 s at worst on a 2024 laptop core.
MAX_SPEC_BYTES = 512 * 1024
#: YAML tokens (keys, values, list entries, brackets) a spec may hold: room for some 8000 paths
#: (a path in a list takes two), while reading stays under about a second (some 30 us a token).
MAX_SPEC_TOKENS = 20_000
#: Collections inside collections: a spec needs 4 levels (extensions, an item, its release, a value).
MAX_SPEC_DEPTH = 64
#: Longest piece of a user's value quoted in a problem (a problem stays one readable line).
MAX_SHOWN = 60
#: Problems a SpecError's message lists (all of them stay in ``problems``).
MAX_SHOWN_PROBLEMS = 100

#: Lone UTF-16 surrogates: a "\\ud800" escape gives one; no file name or file can hold it.
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
#: Digits a whole number in a spec may have (hex 0x..., 1:30:00 and the like included): a level
#: needs 2; PyYAML would build numbers too long to print (Python's 4300-digit limit).
MAX_INT_DIGITS = 18
#: How YAML 1.1 writes whole numbers (decimal, 0x, 0b, octal, 1:30 sexagesimal), in outline.
_NUMBER_RE = re.compile(r"[-+]?(?:0x[0-9a-fA-F_]+|0b[01_]+|[0-9][0-9_:]*)")
_GLOB_CHARS = "*?["
_INT_TAG = "tag:yaml.org,2002:int"
_NULL_TAG = "tag:yaml.org,2002:null"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_STR_TAG = "tag:yaml.org,2002:str"

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, at a 1-based line and column (0 when it is about the file)."""

    file: Path
    line: int
    column: int
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else str(self.file)
        return f"{where}: {self.message}" + (f" ({self.hint})" if self.hint else "")


class SpecError(UserError):
    """The spec cannot be used; ``problems`` lists every problem found, in file order. The
    message shows the first :data:`MAX_SHOWN_PROBLEMS` of them, one a line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line, p.column))
        lines = [str(p) for p in self.problems[:MAX_SHOWN_PROBLEMS]]
        if len(self.problems) > MAX_SHOWN_PROBLEMS:
            lines.append(f"... and {len(self.problems) - MAX_SHOWN_PROBLEMS} more problems")
        super().__init__("\n".join(lines))


def shown(value: str, limit: int = MAX_SHOWN) -> str:
    """``repr(value)``, cut to its first ``limit`` characters (with the full length) when longer,
    so a problem quoting a user's value stays one readable line."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def dotted(keys: KeyPath) -> str:
    """``extensions[0].paths[2]`` for a key path, ``the spec`` for the root."""
    text = ""
    for key in keys:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else key)
    return text or "the spec"


#: C0 controls, DEL and C1 controls: Unicode category Cc.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_NAMES = {"\0": "NUL", "\t": "tab", "\n": "line break", "\r": "carriage return", "\x1b": "ESC",
                  "\x7f": "DEL"}


def control_character(text: str, *, allowed: str = "") -> str | None:
    """``a control character (NUL) at position 15`` for the first control character in ``text``
    not in ``allowed`` (positions count the value's characters from 1), or None."""
    for m in _CONTROL_RE.finditer(text):
        c = m.group()
        if c not in allowed:
            name = _CONTROL_NAMES.get(c, f"U+{ord(c):04X}")
            return f"a control character ({name}) at position {m.start() + 1}"
    return None


# --------------------------------------------------------------------------------------------
# YAML to nodes


class _TooBig(Exception):
    """The text holds more than a spec ever needs (tokens or nesting); reading stops at ``mark``."""

    def __init__(self, mark: yaml.Mark, message: str, hint: str) -> None:
        super().__init__(message)
        self.mark, self.message, self.hint = mark, message, hint


#: The tag of the stand-in node composed for an alias (see :meth:`_NodeLoader.compose_node`).
ALIAS_TAG = "tag:sysextant,2024:alias"


class _NodeLoader(yaml.SafeLoader):
    """A SafeLoader that notes anchors, aliases and explicit tags instead of honouring them.

    A spec is edited in place by the workbench; shared (aliased) values and custom tags cannot
    be kept in sync by such edits, so they are reported as problems. An alias is composed as a
    stand-in scalar (tag :data:`ALIAS_TAG`, text ``*name``), never as the anchored node itself:
    nothing reads a shared value twice, so an alias bomb (billion laughs) costs what its text
    costs. Reading stops, with :class:`_TooBig`, past :data:`MAX_SPEC_TOKENS` tokens or
    :data:`MAX_SPEC_DEPTH` levels of nesting.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.oddities: list[tuple[yaml.Mark, str, str]] = []
        self.token_count = 0
        self.depth = 0

    def fetch_more_tokens(self) -> None:
        self.token_count += 1
        if self.token_count > MAX_SPEC_TOKENS:
            raise _TooBig(self.get_mark(), f"the spec holds more than {MAX_SPEC_TOKENS} YAML tokens "
                          "(keys, values, list entries, brackets); a spec is a small hand-written file",
                          "is this the right file?")
        super().fetch_more_tokens()

    def compose_node(self, parent: Node | None, index: object) -> Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self.oddities.append((event.start_mark, f"YAML alias {shown('*' + event.anchor)} is not supported",
                                  "write the value out; sysextant edits this file and cannot keep shared values in sync"))
            if event.anchor not in self.anchors:
                return super().compose_node(parent, index)  # PyYAML's "found undefined alias"
            self.get_event()
            return ScalarNode(ALIAS_TAG, "*" + event.anchor, event.start_mark, event.end_mark)
        if getattr(event, "anchor", None) is not None:
            self.oddities.append((event.start_mark, f"YAML anchor {shown('&' + event.anchor)} is not supported",
                                  "remove it and write values out in full"))
        tag = getattr(event, "tag", None)
        if tag is not None:
            self.oddities.append((event.start_mark,
                                  f"YAML tag {shown(tag.replace('tag:yaml.org,2002:', '!!'))} is not supported",
                                  "remove the tag; a spec holds only plain text, numbers, lists and mappings"))
        if self.depth >= MAX_SPEC_DEPTH:
            raise _TooBig(event.start_mark, "the YAML is nested far too deeply to be a spec",
                          f"a spec nests lists and mappings at most a few levels deep, not {MAX_SPEC_DEPTH}")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


_SYNTAX_HINTS = (
    ("'\\t'", "indent with spaces, not tabs"),
    ("mapping values are not allowed", "quote a value that contains ': '"),
    ("could not find expected ':'", "each line inside a mapping needs 'key: value'"),
    ("expected <block end>", "check the indentation of this line against the lines above"),
    ("found character '@'", "quote values that start with '@' or '`'"),
    ("found character '`'", "quote values that start with '@' or '`'"),
    ("found undefined alias", "anchors and aliases are not supported; write the value out"),
    ("expected a single document", "a spec is one YAML document: remove the '---' or '...' line"),
    ("while parsing a flow sequence", "close the list's '[' with ']'"),
    ("while parsing a flow mapping", "close the mapping's '{' with '}'"),
)


def _position(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of a character index, counting '\\n' line breaks."""
    index = max(0, min(index, len(text)))
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _one_line(message: str, limit: int = 300) -> str:
    """PyYAML's message on one line, cut to ``limit`` characters (it may quote a whole value)."""
    flat = " ".join(message.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def _innermost_function(exc: BaseException) -> str:
    """The name of the function that raised ``exc``."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_name if tb is not None else ""


def compose(text: str, file: Path) -> tuple[Node | None, list[Problem]]:
    """The node tree of ``text`` plus the problems met while reading it (syntax, aliases, tags).

    The node is None when the text is not YAML at all or holds no document.
    """
    problems: list[Problem] = []
    node: Node | None = None
    loader: _NodeLoader | None = None
    try:
        loader = _NodeLoader(text)
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(x for x in (exc.context, exc.problem) if x) or "unreadable YAML"
        what = _one_line(what)
        if exc.context and exc.context.startswith("while parsing a flow") and exc.context_mark and exc.problem_mark \
                and exc.context_mark.line != exc.problem_mark.line:
            # an unclosed [ or {: PyYAML notices at the next line's ':'; the mistake is where it opened
            noticed = exc.problem_mark
            mark = exc.context_mark
            what += f" (noticed at line {noticed.line + 1}, column {noticed.column + 1})"
        hint = next((h for needle, h in _SYNTAX_HINTS if needle in what), "")
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problems.append(Problem(file, line, col, f"YAML syntax error: {what}", hint))
    except yaml.reader.ReaderError as exc:
        line, col = _position(text, exc.position)
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        problems.append(Problem(file, line, col, f"character {char!r} is not allowed in YAML",
                                "remove it or write it as an escape inside double quotes"))
    except yaml.YAMLError as exc:
        problems.append(Problem(file, 1, 1, f"unreadable YAML: {_one_line(str(exc))}"))
    except _TooBig as exc:
        problems.append(Problem(file, exc.mark.line + 1, exc.mark.column + 1, exc.message, exc.hint))
    except (ValueError, OverflowError) as exc:
        # PyYAML's scanner turns what it read into characters and numbers without checking the
        # range: chr() of a "\\UFFFFFFFF" escape, int() of a %YAML version of thousands of digits
        # (Python's int string limit). It stopped where the problem is.
        mark = loader.get_mark() if loader is not None else None
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        where = _innermost_function(exc)
        if where == "scan_flow_scalar_non_spaces":
            what = "an escape names a character beyond U+10FFFF, the last Unicode character"
            hint = "write the character itself, or an escape up to \\U0010FFFF"
        elif where == "scan_yaml_directive_number":
            what = "the %YAML directive's version number has far too many digits"
            hint = "remove the %YAML line; a spec starts with 'version: 1'"
        else:  # pragma: no cover - no other spot is known; still a problem, not a traceback
            what, hint = f"unreadable text here ({_one_line(str(exc))})", ""
        problems.append(Problem(file, line, col, f"YAML syntax error: {what}", hint))
    except RecursionError:  # pragma: no cover - MAX_SPEC_DEPTH stops nesting well before
        problems.append(Problem(file, 1, 1, "the YAML is nested far too deeply to be a spec"))
    finally:
        if loader is not None:
            loader.dispose()
    for mark, message, hint in loader.oddities if loader is not None else ():
        problems.append(Problem(file, mark.line + 1, mark.column + 1, message, hint))
    return node, problems


# --------------------------------------------------------------------------------------------
# Nodes to the model


class _Reader:
    """Walks the node tree along the spec's schema, collecting problems and locations."""

    def __init__(self, file: Path, base: Path) -> None:
        self.file = file
        self.base = base
        self.problems: list[Problem] = []
        self.locations: dict[KeyPath, tuple[int, int]] = {}

    # -- reporting

    def problem(self, node: Node | yaml.Mark, message: str, hint: str = "") -> None:
        if isinstance(node, Node) and node.tag == ALIAS_TAG:
            return  # the alias itself is the problem, reported where it was read
        mark = node.start_mark if isinstance(node, Node) else node
        self.problems.append(Problem(self.file, mark.line + 1, mark.column + 1, message, hint))

    def locate(self, keys: KeyPath, node: Node) -> None:
        self.locations[keys] = (node.start_mark.line + 1, node.start_mark.column + 1)

    # -- structure

    def _keyed(self, node: MappingNode, keys: KeyPath) -> Iterator[tuple[str, Node, Node]]:
        """(key, key node, value node) of each entry; keys that are not words and duplicate keys
        (PyYAML would silently keep only the last) are reported and skipped."""
        first: dict[str, Node] = {}
        for key_node, value in node.value:
            if not isinstance(key_node, ScalarNode):
                self.problem(key_node, f"a key in {dotted(keys)} is {_kind(key_node)}; keys must be words")
                continue
            key = key_node.value
            if key in first:
                self.problem(key_node, f"duplicate key {shown(key)} in {dotted(keys)}",
                             f"first at line {first[key].start_mark.line + 1}; YAML would silently keep only the last")
                continue
            first[key] = key_node
            yield key, key_node, value

    def mapping(self, node: Node, keys: KeyPath, allowed: Sequence[str]) -> dict[str, Node] | None:
        """The entries of a mapping with allowed keys; unknown, duplicate, odd keys reported."""
        if not isinstance(node, MappingNode):
            self.problem(node, f"{dotted(keys)} must be a mapping of 'key: value' lines, not {_kind(node)}",
                         f"valid keys: {', '.join(allowed)}")
            return None
        entries: dict[str, Node] = {}
        for key, key_node, value in self._keyed(node, keys):
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.problem(key_node, f"YAML merge key '<<' in {dotted(keys)} is not supported",
                             "write the keys out")
                continue
            if key not in allowed:
                self.problem(key_node, f"unknown key {shown(key)} in {dotted(keys)}", _suggest(key, allowed))
                continue
            entries[key] = value
            self.locate((*keys, key), value)
        return entries

    def mapping_of_text(self, node: Node, keys: KeyPath) -> dict[str, tuple[Node, Node]] | None:
        """A mapping with free-form keys (release fields): key -> (key node, value node)."""
        if not isinstance(node, MappingNode):
            self.problem(node, f"{dotted(keys)} must be a mapping such as {{ID: _any, ARCHITECTURE: x86-64}}, not {_kind(node)}")
            return None
        entries: dict[str, tuple[Node, Node]] = {}
        for key, key_node, value in self._keyed(node, keys):
            entries[key] = (key_node, value)
            self.locate((*keys, key), value)
        return entries

    # -- scalars

    def text(self, node: Node, keys: KeyPath, *, null_ok: bool = False) -> str | None:
        """A scalar's text exactly as written (``1.0`` stays ``"1.0"``, never a float)."""
        if isinstance(node, ScalarNode):
            if is_null(node):
                if not null_ok:
                    self.problem(node, f"{dotted(keys)} has no value", "write a value after the ':'")
                return None
            surrogate = _SURROGATE_RE.search(node.value)
            if surrogate:
                self.problem(node, f"{dotted(keys)} contains U+{ord(surrogate.group()):04X}, half of a UTF-16 "
                                   f"surrogate pair, which is no character (at position {surrogate.start() + 1})",
                             "write the character itself, or one \\U escape such as \\U0001F600")
                return None
            return node.value
        self.problem(node, f"{dotted(keys)} must be text, not {_kind(node)}")
        return None

    def integer(self, node: Node, keys: KeyPath) -> int | None:
        if isinstance(node, ScalarNode) and node.tag == _INT_TAG:
            number = None
            if len(node.value) <= 4 * MAX_INT_DIGITS:  # longer is too large in any base, and slow
                # (an explicit !!int on '' or '-' makes PyYAML index an empty string: IndexError)
                with contextlib.suppress(ValueError, TypeError, IndexError):
                    number = int(_CONSTRUCTOR.construct_yaml_int(node))
            if number is not None and abs(number) < 10**MAX_INT_DIGITS:
                return number
            if number is not None or (len(node.value) > 4 * MAX_INT_DIGITS and _NUMBER_RE.fullmatch(node.value)):
                self.problem(node, f"{dotted(keys)} {shown(node.value)} is far too large a number",
                             f"a whole number of at most {MAX_INT_DIGITS} digits")
                return None
        if isinstance(node, ScalarNode) and node.style in ("'", '"') and node.value.strip().isdigit():
            self.problem(node, f"{dotted(keys)} must be a whole number, not the text {shown(node.value)}",
                         "remove the quotes")
        else:
            what = shown(node.value) if isinstance(node, ScalarNode) else _kind(node)
            self.problem(node, f"{dotted(keys)} must be a whole number, not {what}")
        return None

    def boolean(self, node: Node, keys: KeyPath) -> bool | None:
        """``true``/``false`` (YAML 1.1 also reads yes/no/on/off so)."""
        if isinstance(node, ScalarNode) and node.tag == _BOOL_TAG:
            return bool(_CONSTRUCTOR.construct_yaml_bool(node))
        what = shown(node.value) if isinstance(node, ScalarNode) else _kind(node)
        hint = "remove the quotes" if isinstance(node, ScalarNode) and node.style in ("'", '"') and \
            node.value.lower() in ("true", "false") else "write true or false"
        self.problem(node, f"{dotted(keys)} must be true or false, not {what}", hint)
        return None

    def text_list(self, node: Node, keys: KeyPath, example: str) -> list[tuple[str, Node]] | None:
        """A list of text items (with their nodes); a lone text or wrong items reported."""
        if is_null(node):
            return []
        if not isinstance(node, SequenceNode):
            hint = (f"write {keys[-1]}: [{node.value}]" if isinstance(node, ScalarNode) and node.value.isprintable()
                    and len(node.value) <= MAX_SHOWN else f"for example {example}")
            self.problem(node, f"{dotted(keys)} must be a list, not {_kind(node)}", hint)
            return None
        items: list[tuple[str, Node]] = []
        ok = True
        for i, item in enumerate(node.value):
            self.locate((*keys, i), item)
            value = self.text(item, (*keys, i))
            if value is None:
                ok = False
            else:
                items.append((value, item))
        return items if ok else None

    def choice(self, node: Node, keys: KeyPath, choices: Sequence[str]) -> str | None:
        value = self.text(node, keys)
        if value is None:
            return None
        if value not in choices:
            near = _suggest(value, choices, prefix="")
            self.problem(node, f"{dotted(keys)}: unknown value {shown(value)}",
                         f"{near + ' ' if near else ''}choose one of {', '.join(choices)}")
            return None
        return value

    def host_path(self, node: Node, keys: KeyPath, *, null_ok: bool = False) -> Path | None:
        """A path on this machine; relative ones resolve against the spec's folder."""
        value = self.text(node, keys, null_ok=null_ok)
        if value is None:
            return None
        if not value.strip():
            self.problem(node, f"{dotted(keys)} is an empty path")
            return None
        if "\0" in value:
            self.problem(node, f"{dotted(keys)} contains a NUL character")
            return None
        path = self.expand(node, keys, value)
        return None if path is None else self.base / path

    def expand(self, node: Node, keys: KeyPath, value: str) -> Path | None:
        """``value`` as a Path with a leading ``~`` or ``~user`` expanded; a user this machine does
        not know (or a ``~`` with neither HOME nor a password entry) is reported, not raised."""
        if "\0" in value:  # pwd.getpwnam() would raise ValueError for '~\0'
            self.problem(node, f"{dotted(keys)} contains a NUL character")
            return None
        try:
            return Path(value).expanduser()
        except (RuntimeError, ValueError):  # pathlib: "Could not determine home directory."
            user = value[1:].split("/", 1)[0]
            if user:
                self.problem(node, f"{dotted(keys)}: {shown(value)} starts with {shown('~' + user)}, but this "
                                   f"machine has no user {shown(user)}", "write the path out in full")
            else:
                self.problem(node, f"{dotted(keys)}: {shown(value)} starts with '~', but this user's home folder "
                                   "is unknown (no HOME, no user entry)", "write the path out in full")
            return None

    def tree_glob(self, node: Node, keys: KeyPath, value: str, what: str) -> str | None:
        """A path or glob inside the OS tree: relative, no '..', normalised (no './', '//', trailing '/')."""
        if not value.strip():
            self.problem(node, f"{dotted(keys)} is an empty {what}")
            return None
        if "\0" in value:
            self.problem(node, f"{dotted(keys)} contains a NUL character")
            return None
        if value.startswith("/"):
            self.problem(node, f"{dotted(keys)}: {what} {shown(value)} is absolute",
                         f"write it relative to the OS tree: {shown(value.lstrip('/') or '.')}")
            return None
        if ".." in value.split("/"):
            self.problem(node, f"{dotted(keys)}: {what} {shown(value)} contains '..'",
                         "name paths inside the OS tree without '..'")
            return None
        norm = posixpath.normpath(value)
        if norm == ".":
            self.problem(node, f"{dotted(keys)}: {what} {shown(value)} names the whole tree")
            return None
        return norm


_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if is_null(node):
        return "empty"
    if node.tag == ALIAS_TAG:
        return f"the alias {shown(node.value)}"
    return f"the value {shown(node.value)}"


def _suggest(word: str, choices: Sequence[str], prefix: str = "valid: ") -> str:
    """``did you mean 'x'?`` when a choice is close, else the list of choices (with ``prefix``)."""
    lowered = {c.lower(): c for c in choices}
    near = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    if near:
        return f"did you mean {lowered[near[0]]!r}?"
    return f"{prefix}{', '.join(choices)}" if prefix else ""


def is_null(node: Node) -> bool:
    """An empty YAML value (``key:`` or ``~``/``null`` unquoted)."""
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG and node.style is None


