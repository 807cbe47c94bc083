"""Reading a YAML file that a user wrote (config, inventory): UTF-8, bounded in size and alias expansion,
a mapping at the top; anything else is one ConfigError naming the file."""
from __future__ import annotations

from pathlib import Path

from edgeq.core.errors import ConfigError


MAX_YAML_BYTES = 1 << 20  # a config or inventory is a few KB; anything near this is not one
MAX_YAML_NODES = 100_000  # after alias expansion: an alias bomb fails here, in milliseconds
MAX_YAML_DEPTH = 64  # a config nests a few levels; deeper is not a config (whatever the interpreter's recursion limit)


def _expanded_nodes(node, memo: dict, open_: set, depth: int = 0) -> int:
    """How many nodes the document holds once every alias is expanded (linear time, via memo)."""
    import yaml

    if depth > MAX_YAML_DEPTH:
        raise RecursionError  # reported as "nested too deeply", as when the parser itself runs out of stack
    k = id(node)
    if k in memo:
        return memo[k]
    if k in open_:
        raise ConfigError("a YAML alias refers to itself")
    open_.add(k)
    if isinstance(node, yaml.SequenceNode):
        n = 1 + sum(_expanded_nodes(c, memo, open_, depth + 1) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        n = 1 + sum(_expanded_nodes(a, memo, open_, depth + 1) + _expanded_nodes(b, memo, open_, depth + 1)
                    for a, b in node.value)
    else:
        n = 1
    open_.discard(k)
    memo[k] = n
    if n > MAX_YAML_NODES:
        raise ConfigError(f"expands to more than {MAX_YAML_NODES:,} values through aliases (&anchor/*alias); "
                          "write the values out or use fewer aliases")
    return n


def _duplicate_keys(node, where: str = "") -> None:
    """A mapping that gives one key twice is refused: YAML parsers keep the last value silently, so half of what the
    user wrote would be ignored."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            if key is not None and key in seen:
                inside = f" inside '{where}'" if where else " at the top level"
                raise ConfigError(f"line {k.start_mark.line + 1}: key '{key}'{inside} is given twice (first on line "
                                  f"{seen[key] + 1}); keep one")
            if key is not None:
                seen[key] = k.start_mark.line
            _duplicate_keys(v, f"{where}.{key}" if where else str(key))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _duplicate_keys(v, f"{where}[{i}]")


def read_yaml_mapping(path: Path | str, what: str = "config file", expect: str = "a mapping of keys") -> dict:
    """A YAML file whose top level is a mapping, or a one-line ConfigError naming the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: {what} is {size:,} bytes, over the {MAX_YAML_BYTES:,}-byte limit; "
                              f"is this the right file?")
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: {what} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                          "save it as UTF-8") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _expanded_nodes(node, {}, set())
            _duplicate_keys(node)
        raw = yaml.safe_load(text)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: {what} is nested too deeply to be a {what}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"{path}:{at} not valid YAML ({problem})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected {expect} at the top level")
    return raw
