"""Write workbench changes back into the user's spec file, touching only what changed.

Each edit re-composes the current text with PyYAML (:func:`sysextant.core.spec.load.compose`) to find
the exact character span of the node to change, and splices new text in; every other byte stays
as it was: comments, blank lines, key order, quoting, indentation. The edited node keeps its
style: a flow list ``[a, b]`` stays flow, a block list keeps its dash column. New scalars are
quoted only when YAML needs it (:func:`sysextant.core.spec.write.scalar_text`).

Every edit is checked before it is kept: the new text must compose, and its data must equal the
old data with exactly the intended change. An edit that cannot be made that way raises
:class:`SpecEditError` and leaves the text untouched.

Limits: comments *inside* a flow list or mapping (``[a,  # note``) cannot be kept when that list
is rewritten, so such an edit is refused with a hint instead.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import os
from collections.abc import Callable
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..atomic import atomic_output
from ..errors import UserError
from ..rules import extension_name_problem
from .load import SpecError, compose, dotted, is_null
from .model import ExtensionSpec
from .write import FLOW_WIDTH, extension_fields, flow_text, scalar_text
from .write import extension_lines as _extension_lines

Key = str | int
Splice = tuple[int, int, str]  # replace text[start:end] with the string


class SpecEditError(UserError):
    """An edit that cannot be made (unknown extension, bad name, a layout we cannot splice)."""


def save_text_atomic(path: Path, text: str) -> None:
    """Replace the file at ``path`` (or the file a symlink there points to) atomically.

    The file keeps its permission bits and, when we may, its owner.
    """
    target = Path(os.path.realpath(path))
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    mode = (st.st_mode & 0o7777) if st else 0o644
    with atomic_output(target, mode) as fh:
        if st is not None:
            # Not ours to give away when we are not root; the content matters more than the owner.
            with contextlib.suppress(PermissionError):
                os.fchown(fh.fileno(), st.st_uid, st.st_gid)
        fh.write(text.encode("utf-8"))


class SpecEditor:
    """Comment-preserving edits of one spec text; read the result from :attr:`text`."""

    def __init__(self, text: str, path: Path) -> None:
        self.path = Path(path)
        self._text = text
        self._composed: tuple[str, MappingNode] | None = None
        self._root()  # refuse text we cannot work on right away

    @property
    def text(self) -> str:
        return self._text

    # ---------------------------------------------------------------- public edits

    def set_paths(self, ext_name: str, paths: list[str]) -> None:
        """Make extension ``ext_name`` carry exactly ``paths`` (in this order)."""
        self._set_list(ext_name, "paths", paths)

    def set_exclude(self, ext_name: str, globs: list[str] | None) -> None:
        """Make extension ``ext_name``'s ``exclude`` exactly ``globs`` (in this order); None removes
        the key (undoing an edit that added it), where its lines can go whole."""
        self._set_list_or_drop(ext_name, "exclude", globs)

    def set_packages(self, ext_name: str, names: list[str] | None) -> None:
        """Make extension ``ext_name``'s ``packages`` exactly ``names``; None removes the key."""
        self._set_list_or_drop(ext_name, "packages", names)

    def _set_list_or_drop(self, ext_name: str, key_name: str, items: list[str] | None) -> None:
        if items is None:
            root = self._root()
            index, ext = self._extension(root, ext_name)
            entry = _entry(ext, key_name)
            if entry is None:
                return
            key, value = entry
            start = self._line_start(key.start_mark.index)
            if getattr(ext, "flow_style", False) or self._text[start:key.start_mark.index].strip():
                self._set_list(ext_name, key_name, [])  # a {...} item or a key after a dash: keep it, empty
                return

            def drop(data: dict) -> None:
                del data["extensions"][index][key_name]

            self._apply([(start, self._line_end(self._content_end(value)), "")], drop,
                        f"the {key_name} of {ext_name!r}")
            return
        self._set_list(ext_name, key_name, items)

    def set_os_exclude(self, globs: list[str]) -> None:
        """Make ``os.exclude`` exactly ``globs`` (in this order), adding the key when missing."""
        items = [str(g) for g in globs]
        os_node = _child(self._root(), "os")
        if not isinstance(os_node, MappingNode) or not os_node.value:
            raise self._cannot("set os.exclude", "os is not a mapping of keys")
        entry = _entry(os_node, "exclude")
        splices = (self._insert_key(os_node, "exclude", items) if entry is None
                   else self._replace_list(entry[0], entry[1], items, "os.exclude"))

        def change(data: dict) -> None:
            data["os"]["exclude"] = items

        self._apply(splices, change, "os.exclude")

    def _set_list(self, ext_name: str, key: str, items: list[str]) -> None:
        items = [str(p) for p in items]
        root = self._root()
        index, ext = self._extension(root, ext_name)
        entry = _entry(ext, key)
        if entry is None:
            splices = self._insert_key(ext, key, items)
        else:
            splices = self._replace_list(entry[0], entry[1], items, f"{key} of {ext_name!r}")

        def change(data: dict) -> None:
            data["extensions"][index][key] = items

        self._apply(splices, change, f"the {key} of {ext_name!r}")

    def add_extension(self, ext: ExtensionSpec) -> None:
        """Append ``ext`` at the end of ``extensions`` (creating the list if needed)."""
        root = self._root()
        self._check_new_name(root, ext.name)
        fields = extension_fields(ext)
        unit = self._unit(root)
        entry = _entry(root, "extensions")
        quote = _quote_style(root)

        def extension_lines(ext: ExtensionSpec, indent: int, unit: int) -> list[str]:
            return _in_quote_style(_extension_lines(ext, indent, unit), fields, quote)

        splices: list[Splice]
        if entry is None:
            if root.flow_style:
                raise self._cannot("add an extension", "the spec is one {...} mapping")
            lines = ["extensions:", *extension_lines(ext, unit, unit)]
            splices = [self._lines_at(len(self._text), lines)]
        else:
            key, seq = entry
            if is_null(seq):
                colon = self._colon_after(key)
                splices = [(colon + 1, self._content_end(seq), ""),
                           self._lines_at(self._line_end(seq.start_mark.index), extension_lines(ext, unit, unit))]
            elif isinstance(seq, SequenceNode) and seq.flow_style and seq.value:
                splices = [(self._content_end(seq.value[-1]), self._content_end(seq.value[-1]),
                            ", " + flow_text(fields))]
            elif isinstance(seq, SequenceNode) and seq.flow_style:
                colon = self._colon_after(key)
                end = seq.end_mark.index
                splices = [(colon + 1, end, ""),
                           self._lines_at(self._line_end(end), extension_lines(ext, unit, unit))]
            elif isinstance(seq, SequenceNode):
                dash = self._dash_column(seq.value[0])
                at = self._item_extent(seq.value[-1])[1]
                splices = [self._lines_at(at, extension_lines(ext, dash, unit))]
            else:
                raise self._cannot("add an extension", "extensions is not a list")

        def change(data: dict) -> None:
            if data.get("extensions") is None:
                data["extensions"] = []
            data["extensions"].append(copy.deepcopy(fields))

        self._apply(splices, change, f"extension {ext.name!r}")

    def rename_extension(self, old: str, new: str) -> None:
        """Rename extension ``old`` to ``new`` (its ``name:`` scalar only)."""
        root = self._root()
        index, ext = self._extension(root, old)
        if new == old:
            return
        self._check_new_name(root, new, ignore=old)
        entry = _entry(ext, "name")
        assert entry is not None  # _extension found it by name
        splices = [self._scalar_splice(entry[1], new, flow=bool(ext.flow_style))]

        def change(data: dict) -> None:
            data["extensions"][index]["name"] = new

        self._apply(splices, change, f"the name of {old!r}")

    def remove_extension(self, name: str) -> None:
        """Delete extension ``name``: its lines, keeping comments around it."""
        root = self._root()
        index, _ = self._extension(root, name)
        key, seq = _entry(root, "extensions")  # type: ignore[misc]  # _extension found it
        items = seq.value
        if seq.flow_style:
            item = items[index]
            if index + 1 < len(items):
                splices = [(item.start_mark.index, items[index + 1].start_mark.index, "")]
            elif index > 0:
                splices = [(self._content_end(items[index - 1]), self._content_end(item), "")]
            else:
                splices = [(item.start_mark.index, self._content_end(item), "")]
        else:
            start, end = self._item_extent(items[index])
            splices = [(start, end, "")]
            if len(items) == 1:
                colon = self._colon_after(key)
                splices.insert(0, (colon + 1, colon + 1, " []"))

        def change(data: dict) -> None:
            del data["extensions"][index]

        self._apply(splices, change, f"extension {name!r}")

    def set_value(self, keys: tuple[Key, ...], value: str | int | bool | None) -> None:
        """Set the scalar at ``keys`` (e.g. ``("uki", "limit")``).

        A missing key is added at the end of its mapping; missing (or empty) mappings on the way
        are created, so ``("uki", "limit")`` works in a spec without a ``uki`` section.
        """
        if not keys:
            raise SpecEditError("set_value needs a key path")
        root = self._root()
        parent: Node = root
        splices: list[Splice] | None = None
        for depth, key in enumerate(keys):
            child = _child(parent, key)
            rest = keys[depth + 1:]
            if child is None or (rest and is_null(child)):
                if not isinstance(parent, MappingNode) or not all(isinstance(k, str) for k in keys[depth:]):
                    raise SpecEditError(f"{self.path}: there is no {dotted(keys[: depth + 1])} to change")
                tree: object = value
                for k in reversed(rest):
                    tree = {k: tree}
                if child is None:
                    splices = self._insert_key(parent, str(key), tree)
                else:
                    splices = self._fill_null(parent, str(key), child, tree)  # type: ignore[arg-type]
                break
            if not rest:
                if not isinstance(child, ScalarNode):
                    raise SpecEditError(f"{self.path}: {dotted(keys)} is a list or mapping, not a single value")
                flow = bool(getattr(parent, "flow_style", False))
                splices = [self._scalar_splice(child, value, flow=flow)]
            parent = child
        assert splices is not None

        def change(data: dict) -> None:
            node = data
            for key in keys[:-1]:
                if isinstance(node, dict) and node.get(key) is None:
                    node[key] = {}
                node = node[key]
            node[keys[-1]] = value

        self._apply(splices, change, dotted(keys))

    # ---------------------------------------------------------------- reading the text

    def _root(self) -> MappingNode:
        """The composed top mapping of the current text (cached until the text changes)."""
        if self._composed is not None and self._composed[0] is self._text:
            return self._composed[1]
        node, problems = compose(self._text, self.path)
        if problems:
            raise SpecError(problems)
        if not isinstance(node, MappingNode):
            raise SpecEditError(f"{self.path}: the spec is not a mapping of keys; fix it before editing")
        self._composed = (self._text, node)
        return node

    @property
    def _newline(self) -> str:
        return "\r\n" if "\r\n" in self._text else "\n"

    def _unit(self, root: MappingNode) -> int:
        """The file's indentation step: the column of the first key nested in a top-level block mapping."""
        for _, value in root.value:
            if isinstance(value, MappingNode) and not value.flow_style and value.value:
                col = self._column(value.value[0][0].start_mark.index)
                if col > 0:
                    return col
        return 2

    def _column(self, index: int) -> int:
        return index - (self._text.rfind("\n", 0, index) + 1)

    def _line_start(self, index: int) -> int:
        return self._text.rfind("\n", 0, index) + 1

    def _line_end(self, index: int) -> int:
        """Index just past the line break of the line holding ``index`` (or the text's end)."""
        nl = self._text.find("\n", index)
        return len(self._text) if nl < 0 else nl + 1

    def _content_end(self, node: Node) -> int:
        """Index just past the node's last character of content (a block node's last leaf)."""
        while isinstance(node, MappingNode | SequenceNode) and not node.flow_style and node.value:
            last = node.value[-1]
            node = last[1] if isinstance(node, MappingNode) else last
        start, end = node.start_mark.index, node.end_mark.index
        while end > start and self._text[end - 1] in " \t\r\n":
            end -= 1
        return end

    def _colon_after(self, key: Node) -> int:
        """Index of the ':' that follows a mapping key."""
        i = key.end_mark.index
        while i < len(self._text) and self._text[i] in " \t":
            i += 1
        if i >= len(self._text) or self._text[i] != ":":
            raise self._cannot(f"edit {key.value!r}", "its key is not followed by ':' on the same line")
        return i

    def _dash(self, item: Node) -> int:
        """Index of the '-' that introduces a block sequence item."""
        i = item.start_mark.index - 1
        while i >= 0 and self._text[i] in " \t\r\n":
            i -= 1
        if i < 0 or self._text[i] != "-" or self._text[self._line_start(i):i].strip():
            raise self._cannot("edit a list", "an item does not start a line with '- '")
        return i

    def _dash_column(self, item: Node) -> int:
        return self._column(self._dash(item))

    def _item_extent(self, item: Node) -> tuple[int, int]:
        """Whole lines of a block sequence item: from its dash line to its last content line."""
        return self._line_start(self._dash(item)), self._line_end(self._content_end(item))

    # ---------------------------------------------------------------- building splices

    def _lines_at(self, at: int, lines: list[str]) -> Splice:
        """Insert whole lines at ``at`` (a line start, or the end of a text without final newline)."""
        nl = self._newline
        lead = nl if at > 0 and self._text[at - 1] != "\n" else ""
        return at, at, lead + "".join(line + nl for line in lines)

    def _scalar_splice(self, node: ScalarNode, value: object, *, flow: bool) -> Splice:
        style = node.style if isinstance(value, str) else None
        return self._scalar_splice_text(node, scalar_text(value, flow=flow, style=style))  # type: ignore[arg-type]

    def _insert_key(self, mapping: MappingNode, key: str, value: object) -> list[Splice]:
        """Add ``key: value`` at the end of an existing mapping, in its style."""
        if mapping.flow_style:
            if mapping.value:
                at = self._content_end(mapping.value[-1][1])
                return [(at, at, f", {scalar_text(key, flow=True)}: {flow_text(value)}")]
            at = mapping.end_mark.index - 1  # just before '}'
            return [(at, at, f"{scalar_text(key, flow=True)}: {flow_text(value)}")]
        if not mapping.value:  # pragma: no cover - a block mapping always has an entry
            raise self._cannot(f"add {key!r}", "the mapping is empty")
        indent = self._column(mapping.value[0][0].start_mark.index)
        at = self._line_end(self._content_end(mapping.value[-1][1]))
        return [self._lines_at(at, self._block_lines(key, value, indent))]

    def _fill_null(self, parent: MappingNode, key: str, null: ScalarNode, tree: dict) -> list[Splice]:
        """Turn an empty ``key:`` into a mapping holding ``tree``."""
        if parent.flow_style:
            return [self._scalar_splice_text(null, flow_text(tree))]
        key_node = next(k for k, v in parent.value if v is null)
        colon = self._colon_after(key_node)
        indent = self._column(key_node.start_mark.index) + self._unit(self._root())
        lines = [line for k, v in tree.items() for line in self._block_lines(k, v, indent)]
        return [(colon + 1, self._content_end(null), ""),
                self._lines_at(self._line_end(null.start_mark.index), lines)]

    def _block_lines(self, key: str, value: object, indent: int) -> list[str]:
        """``key: value`` as block lines at ``indent``; long lists one item a line, mappings nested."""
        pad = " " * indent
        unit = self._unit(self._root())
        if isinstance(value, dict):
            nested = [line for k, v in value.items() for line in self._block_lines(k, v, indent + unit)]
            return [f"{pad}{scalar_text(key)}:", *nested]
        text = flow_text(value) if isinstance(value, list) else scalar_text(value)  # type: ignore[arg-type]
        if isinstance(value, list) and value and indent + len(key) + 2 + len(text) > FLOW_WIDTH:
            return [f"{pad}{scalar_text(key)}:", *(f"{pad}{' ' * unit}- {scalar_text(v)}" for v in value)]
        return [f"{pad}{scalar_text(key)}: {text}"]

    def _replace_list(self, key: Node, node: Node, items: list[str], what: str) -> list[Splice]:
        """Splices turning the value ``node`` (a list, or empty) into the list ``items``."""
        if isinstance(node, ScalarNode):
            return [self._scalar_splice_text(node, flow_text(items))]
        if not isinstance(node, SequenceNode) or any(not isinstance(i, ScalarNode) for i in node.value):
            raise self._cannot(f"change the {what}", "it is not a list of single values")
        if node.flow_style:
            return [self._flow_list_splice(node, items, what)]
        return self._block_list_splices(key, node, items)

    def _scalar_splice_text(self, node: ScalarNode, text: str) -> Splice:
        """Replace a scalar's text; an empty value right after 'key:' gets a space first."""
        start, end = node.start_mark.index, self._content_end(node)
        if node.style in ("|", ">"):
            end = node.end_mark.index
            text += self._newline
        if start == end and start > 0 and self._text[start - 1] == ":":
            text = " " + text
        return start, end, text

    def _flow_list_splice(self, node: SequenceNode, items: list[str], what: str) -> Splice:
        start, end = node.start_mark.index, node.end_mark.index
        bounds = [start + 1] + [b for i in node.value for b in (i.start_mark.index, i.end_mark.index)] + [end - 1]
        gaps = [self._text[bounds[k]:bounds[k + 1]] for k in range(0, len(bounds), 2)]
        if any("#" in gap for gap in gaps):
            raise self._cannot(f"change the {what}", "comments inside its [...] would be lost",
                               "move them above the list, or write it as a block list")
        if "\n" in self._text[start:end] and node.value and len(items) > 1:
            sep = ",\n" + " " * self._column(node.value[0].start_mark.index)
            return start, end, "[" + sep.join(scalar_text(i, flow=True) for i in items) + "]"
        return start, end, flow_text(items)

    def _block_list_splices(self, key: Node, node: SequenceNode, items: list[str]) -> list[Splice]:
        """Delete and insert whole item lines, leaving unchanged items and comments alone."""
        old = [i.value for i in node.value]
        extents = [self._item_extent(i) for i in node.value]
        dash = " " * self._dash_column(node.value[0])
        splices: list[Splice] = []
        deleted = 0
        matcher = difflib.SequenceMatcher(None, old, items, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag in ("delete", "replace"):
                splices.extend((extents[i][0], extents[i][1], "") for i in range(i1, i2))
                deleted += i2 - i1
            if tag in ("insert", "replace"):
                at = extents[i1 - 1][1] if i1 > 0 else extents[0][0]
                splices.append(self._lines_at(at, [f"{dash}- {scalar_text(v)}" for v in items[j1:j2]]))
        if deleted == len(old) and not items:
            colon = self._colon_after(key)
            splices.append((colon + 1, colon + 1, " []"))
        return splices

    # ---------------------------------------------------------------- checks and applying

    def _extension(self, root: MappingNode, name: str) -> tuple[int, MappingNode]:
        entry = _entry(root, "extensions")
        if entry is not None and isinstance(entry[1], SequenceNode):
            for i, item in enumerate(entry[1].value):
                found = _entry(item, "name") if isinstance(item, MappingNode) else None
                if found is not None and isinstance(found[1], ScalarNode) and found[1].value == name:
                    return i, item
        raise SpecEditError(f"{self.path}: there is no extension named {name!r}")

    def _check_new_name(self, root: MappingNode, name: str, ignore: str | None = None) -> None:
        why = extension_name_problem(name)
        if why:
            raise SpecEditError(why)
        entry = _entry(root, "extensions")
        if entry is not None and isinstance(entry[1], SequenceNode):
            for item in entry[1].value:
                found = _entry(item, "name") if isinstance(item, MappingNode) else None
                if found is not None and isinstance(found[1], ScalarNode):
                    other = found[1].value
                    if other != ignore and other.lower() == name.lower():
                        raise SpecEditError(f"{self.path}: an extension named {other!r} already exists")

    def _cannot(self, action: str, reason: str, hint: str = "edit the file by hand") -> SpecEditError:
        return SpecEditError(f"{self.path}: cannot {action} without disturbing the file: {reason}; {hint}")

    def _apply(self, splices: list[Splice], change: Callable[[dict], None], what: str) -> None:
        """Splice, then keep the result only if its data is the old data with ``change`` made."""
        out: list[str] = []
        pos = 0
        for start, end, text in sorted(splices, key=lambda s: (s[0], s[1])):
            if start < pos:  # pragma: no cover - splices are built disjoint
                raise self._cannot(f"change {what}", "two changes overlap")
            out.append(self._text[pos:start])
            out.append(text)
            pos = end
        out.append(self._text[pos:])
        new_text = "".join(out)
        expected = _data(self._text)
        change(expected)
        node, problems = compose(new_text, self.path)
        if problems or node is None or _data(new_text) != expected:
            raise self._cannot(f"change {what}", "the result would not read back as intended")
        self._text = new_text
        if isinstance(node, MappingNode):
            self._composed = (new_text, node)


#: libyaml's safe loader when PyYAML was built with it: only the data is compared, so its speed helps.
_DATA_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _data(text: str) -> dict:
    loaded = yaml.load(text, Loader=_DATA_LOADER)  # noqa: S506 - a safe loader
    return loaded if isinstance(loaded, dict) else {}


def _entry(mapping: Node, key: str) -> tuple[Node, Node] | None:
    if isinstance(mapping, MappingNode):
        for k, v in mapping.value:
            if isinstance(k, ScalarNode) and k.value == key:
                return k, v
    return None


def _child(node: Node, key: Key) -> Node | None:
    if isinstance(key, int) and isinstance(node, SequenceNode):
        return node.value[key] if -len(node.value) <= key < len(node.value) else None
    if isinstance(key, str):
        entry = _entry(node, key)
        return entry[1] if entry else None
    return None


def _quote_style(root: Node) -> str | None:
    """The quote the spec's author uses for quoted strings (``"`` or ``'``, the more frequent),
    or None when nothing is quoted: new text follows it (``version: "1.0"`` next to the user's
    ``"1.0"``, not ``'1.0'``)."""
    counts = {'"': 0, "'": 0}
    todo = [root]
    while todo:
        node = todo.pop()
        if isinstance(node, ScalarNode):
            if node.style in counts:
                counts[node.style] += 1
        elif isinstance(node, MappingNode):
            for k, v in node.value:
                todo += [k, v]
        elif isinstance(node, SequenceNode):
            todo += node.value
    if not any(counts.values()):
        return None
    return '"' if counts['"'] >= counts["'"] else "'"


def _in_quote_style(lines: list[str], fields: dict, quote: str | None) -> list[str]:
    """``lines`` of a new extension with the string values that need quotes quoted in ``quote``."""
    if quote is None:
        return lines
    out = []
    for line in lines:
        for key, value in fields.items():
            if not isinstance(value, str):
                continue
            plain = scalar_text(value)
            if plain[:1] in "'\"" and plain[0] != quote and line.endswith(f"{key}: {plain}"):
                line = line[: len(line) - len(plain)] + scalar_text(value, style=quote)
        out.append(line)
    return out
