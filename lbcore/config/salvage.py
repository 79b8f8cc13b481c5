"""The part of a config that passed the schema, so reference and file checks
can run on it in the same pass as the schema errors (nginx -t stops at the
first error; a user fixing a file wants every fault from one run).

Each schema error names a YAML path. Salvaging removes the smallest thing
around it that can go: an optional key (its default takes over), a named
entry (a pool, a certificate...) or a list item (a listener, a member...).
Required keys can't go, so the search climbs to the enclosing item. The
result is validated again until it passes (or nothing more can be removed:
then only the schema errors are reported).

Removed list items shift the indexes of the ones after them; `Salvaged`
maps paths in the salvaged model back to the file's, so every later problem
still names the line it came from."""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from lbcore.config.model import Config

Path_ = tuple[Any, ...]
# Top-level sections whose entries are named and referenced by name.
NAMED = ("certificates", "ip_groups", "security_policies", "pools")
# A bound on validation rounds: each removes at least one node.
MAX_ROUNDS = 50
# Items a check's message may name by index.
_INDEXED = re.compile(r"\b(listeners|members)\[(\d+)\]")


@dataclass
class Salvaged:
    cfg: Config
    # For every list that lost items, keyed by its path in the file: the
    # file index of each item the salvaged list kept.
    kept: dict[Path_, list[int]] = field(default_factory=dict)
    # Named entries that failed the schema: (section, name).
    removed: set[tuple[str, str]] = field(default_factory=set)

    def file_path(self, path: Path_) -> Path_:
        """A path in the salvaged model -> the same node's path in the file."""
        out: list[Any] = []
        for part in path:
            kept = self.kept.get(tuple(out))
            if kept is not None and isinstance(part, int) and part < len(kept):
                part = kept[part]
            out.append(part)
        return tuple(out)

    def file_message(self, path: Path_, message: str) -> str:
        """Messages name other items by index too ('also the name of
        members[0]'): those indexes are mapped back like the path."""
        def fix(m: re.Match) -> str:
            where = ("listeners",) if m[1] == "listeners" else tuple(path[:3])
            kept = self.kept.get(where)
            i = int(m[2])
            return f"{m[1]}[{kept[i] if kept is not None and i < len(kept) else i}]"

        return _INDEXED.sub(fix, message)

    def is_echo(self, message: str) -> bool:
        """A dangling-reference problem about an entry that exists in the file
        but failed the schema: its own error already says what is wrong."""
        return any(message.startswith("no ") and f" named {name!r}" in message
                   for _, name in self.removed)


def _strip(tp: Any) -> Any:
    """Annotated[X, ...] -> X; X | None -> X."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _model_of(tp: Any, node: Any) -> type[BaseModel] | None:
    """The model class a node validates as: a discriminated union picks the
    member whose literal `type` matches the node's."""
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and isinstance(node, dict):
        for arg in typing.get_args(tp):
            arg = _strip(arg)
            if not (isinstance(arg, type) and issubclass(arg, BaseModel)
                    and "type" in arg.model_fields):
                continue
            if node.get("type") in typing.get_args(_strip(arg.model_fields["type"].annotation)):
                return arg
    return None


def _type_at(data: Any, path: Path_) -> Any:
    """The annotation of the node at `path` (None where the walk loses track)."""
    tp: Any = Config
    node = data
    for part in path:
        model = _model_of(tp, node)
        if model is not None:
            if part not in model.model_fields:
                return None
            tp = model.model_fields[part].annotation
        else:
            container = _strip(tp)
            origin = typing.get_origin(container)
            args = typing.get_args(container)
            if origin is tuple or origin is list:
                tp = args[0]
            elif origin is dict:
                tp = args[1]
            else:
                return None
        node = node[part] if isinstance(node, dict | list) and _has(node, part) else None
    return tp


def _has(node: Any, part: Any) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(part, int) and 0 <= part < len(node)


def _node(data: Any, path: Path_) -> Any:
    for part in path:
        if not (isinstance(data, dict | list) and _has(data, part)):
            return None
        data = data[part]
    return data


def removal_for(data: Any, path: Path_) -> Path_ | None:
    """The smallest node at or above `path` whose removal leaves a document
    that may validate; None if only the whole file would do."""
    for n in range(len(path), 0, -1):
        parent, key = path[:n - 1], path[n - 1]
        pnode = _node(data, parent)
        if isinstance(pnode, list):
            return path[:n]
        if not isinstance(pnode, dict) or key not in pnode:
            continue        # a missing key: the fault is its parent's
        model = _model_of(_type_at(data, parent), pnode)
        if model is None:
            return path[:n]             # an entry of a dict (a pool, a weight...)
        field_ = model.model_fields.get(key)
        if field_ is None or not field_.is_required():
            return path[:n]             # unknown, or optional: the default takes over
    return None


def _without(node: Any, here: Path_, removals: set[Path_], kept: dict[Path_, list[int]]) -> Any:
    if isinstance(node, dict):
        return {k: _without(v, here + (k,), removals, kept)
                for k, v in node.items() if here + (k,) not in removals}
    if isinstance(node, list):
        idx = [i for i in range(len(node)) if here + (i,) not in removals]
        if len(idx) != len(node):
            kept[here] = idx
        return [_without(node[i], here + (i,), removals, kept) for i in idx]
    return node


def salvage(data: dict, first: ValidationError | None, extra: list[Path_],
            path_of) -> Salvaged | None:
    """The largest part of `data` that validates, or None. `path_of(loc,
    node)` turns a pydantic loc into a YAML path; `extra` are paths refused
    before the schema ran (reserved keys)."""
    removals: set[Path_] = set()
    for p in extra:
        r = removal_for(data, p)
        if r is None:
            return None
        removals.add(r)
    exc = first
    for _ in range(MAX_ROUNDS):
        kept: dict[Path_, list[int]] = {}
        pruned = _without(data, (), removals, kept)
        result = Salvaged(None, kept)       # type: ignore[arg-type]
        if exc is None:
            try:
                cfg = Config.model_validate(pruned)
            except ValidationError as e:
                exc = e
            else:
                result.cfg = cfg
                result.removed = {(p[0], p[1]) for p in removals
                                  if len(p) == 2 and p[0] in NAMED}
                return result
        grew = False
        # The first error list is of the file itself, later ones of the pruned copy.
        on, paths = (data, lambda p: p) if exc is first else (pruned, result.file_path)
        for err in exc.errors():
            path = paths(path_of(err["loc"], on))
            r = removal_for(data, path)
            if r is None:
                return None
            if r not in removals:
                removals.add(r)
                grew = True
        if not grew:
            return None
        exc = None
    return None
