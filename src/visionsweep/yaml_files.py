"""The one YAML reader for what users give: settings files (YAML or JSON), job files, MLTable files,
YOLO ``data.yaml`` and the values of ``--set KEY=VALUE``.

YAML is read with PyYAML's safe loader, so no tag can build a Python object or run code. On top of
that, this reader refuses valid YAML that would be unsafe or ambiguous to use:

* a file over ``MAX_FILE_BYTES`` (1 MiB; real settings, job and MLTable files are a few KiB);
* aliases that expand to more than ``MAX_ALIAS_EXPANSION`` nodes. PyYAML builds an alias as a
  reference to the anchored value, so a "billion laughs" file loads in milliseconds into a structure
  that is small in memory but has 10^9 leaves once anything walks it (a ``repr`` in an error
  message, JSON for settings.json, validation). The expansion is counted on the composed node graph
  before any Python object is built, in time and memory proportional to the file, and a recursive
  alias (a value that contains itself) is refused outright;
* nesting deeper than the parser's recursion allows;
* a mapping that gives the same key twice: YAML says keys are unique, PyYAML keeps the last value
  silently, so a second ``learning_rate`` would quietly win over the first.

Integers are decimal only. YAML 1.1, which PyYAML follows, also reads ``0x2`` as hexadecimal 2,
``010`` as octal 8 and ``1:30`` as sexagesimal 90, so ``tile_grid_size: 0x2`` (a grid with no
columns, to be refused as such) would silently become the number 2. Such values stay strings here,
and the settings schema says what is wrong with them.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from visionsweep.errors import VisionSweepError

MAX_FILE_BYTES = 1 << 20
MAX_ALIAS_EXPANSION = 10_000
_MERGE_TAG = "tag:yaml.org,2002:merge"
_INT_TAG = "tag:yaml.org,2002:int"
_DECIMAL_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$")


class YamlError(VisionSweepError):
    """A file or text that is not YAML (or JSON) visionsweep can read. The message names the source."""


class YamlRefusedError(YamlError):
    """Valid YAML that is refused: too large, an alias bomb, nested too deeply, a duplicate key."""


def read_yaml_file(path: str | Path) -> Any:
    """The content of a YAML or JSON file (None when it is empty). Raises ``YamlError``."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            content = handle.read(MAX_FILE_BYTES + 1)  # never more, whatever the file claims to be
    except OSError as error:
        raise YamlError(f"{path} cannot be read: {error.strerror or error}") from None
    if len(content) > MAX_FILE_BYTES:
        raise YamlRefusedError(f"{path} is larger than {MAX_FILE_BYTES:,} bytes, the most a YAML or JSON file may "
                               "hold here; settings, job and MLTable files are a few KiB")
    return _load(content, str(path))


def parse_yaml(text: str, source: str) -> Any:
    """The value that ``text`` holds, read by the same rules as a file; ``source`` names it in errors."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise YamlRefusedError(f"{source} is longer than {MAX_FILE_BYTES:,} bytes")
    return _load(text, source)


def _load(content: str | bytes, source: str) -> Any:
    loader = _Loader(content)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_alias_expansion(node, source)
        return loader.construct_document(node)
    except _DuplicateKey as error:
        raise YamlRefusedError(f"{source}: {error}") from None
    except yaml.YAMLError as error:
        raise YamlError(f"{source} is not valid YAML: {error}") from None
    except RecursionError:
        raise YamlRefusedError(f"{source} is nested too deeply to read") from None
    finally:
        loader.dispose()


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with duplicate mapping keys an error instead of last-wins."""

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:  # '<<: *base' may be overridden by the keys beside it
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    earlier = first_line.get(key)
                except TypeError:  # an unhashable key: the base class says so
                    continue
                if earlier is not None:
                    raise _DuplicateKey(f"line {line}: duplicate key {key!r} (first given at line {earlier}); "
                                        "give each key once")
                first_line[key] = line
        return super().construct_mapping(node, deep=deep)


# PyYAML's implicit resolvers without YAML 1.1's hexadecimal, octal, binary and sexagesimal integers.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _INT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_INT_TAG, _DECIMAL_INT, list("-+0123456789"))


class _DuplicateKey(Exception):
    """Raised inside PyYAML's construction, turned into a ``YamlRefusedError`` naming the source."""


def _check_alias_expansion(root: Node, source: str) -> None:
    """Refuse a document whose aliases repeat more than ``MAX_ALIAS_EXPANSION`` nodes.

    After composing, an alias is the anchored node object itself, so a node reached a second time is
    an alias. ``expanded`` counts each node once per path to it, by memoising the size of each
    distinct node: the cost is one visit per distinct node, however large the expansion.
    """
    expanded: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in expanded:
            return expanded[key]
        if key in open_nodes:
            raise YamlRefusedError(f"{source}: an alias at line {node.start_mark.line + 1} refers to a value that "
                                   "contains it (a recursive structure), which visionsweep does not read")
        open_nodes.add(key)
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = []
        total = 1 + sum(size(child) for child in children)
        open_nodes.discard(key)
        expanded[key] = total
        return total

    repeated = size(root) - len(expanded)
    if repeated > MAX_ALIAS_EXPANSION:
        raise YamlRefusedError(
            f"{source}: its aliases (*name) repeat {repeated:,} values, more than the {MAX_ALIAS_EXPANSION:,} "
            "allowed (an alias bomb such as 'billion laughs'?); write the values out instead of nesting aliases")
