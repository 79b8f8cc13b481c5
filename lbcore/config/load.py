"""YAML file -> validated, immutable Config, or a ConfigError listing every
fault with file, line and path."""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from lbcore.config.errors import ConfigError, ConfigIssue
from lbcore.config.model import Config
from lbcore.config.salvage import salvage
from lbcore.config.validate import (
    check_admin,
    check_forwarding,
    check_listeners,
    check_policies,
    check_pools,
    check_resolution,
    load_certificates,
    normalise_ip_groups,
)
from lbcore.config.yamlpos import YamlProblem, fmt_path, line_of, load_with_lines


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(str(p), 0, "(file)", f"cannot read: {exc}")]) from exc
    return load_config_text(text, filename=str(path), base_dir=p.resolve().parent, source=p)


def load_config_text(text: str, filename: str = "<config>", base_dir: Path | None = None,
                     source: Path | None = None, resolve: bool = True) -> Config:
    """`resolve`: look member host names up (a worker, which gets its
    addresses from the master, does not)."""
    base_dir = base_dir or Path.cwd()
    try:
        data, lines = load_with_lines(text)
    except YamlProblem as exc:
        raise ConfigError([ConfigIssue(filename, exc.line, exc.path, exc.message)]) from exc
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(filename, 1, "(top level)",
                                       "expected a mapping with listeners and pools")])
    reserved = _reserved_keys(data)
    issues = [ConfigIssue(filename, line_of(lines, path), fmt_path(path), msg)
              for path, msg in reserved]
    part = None
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        issues += _pydantic_issues(exc, data, lines, filename)
        # What passed the schema still gets its reference and file checks.
        part = salvage(data, exc, [p for p, _ in reserved], _yaml_path)
        if part is None:
            raise ConfigError(issues) from None
        cfg = part.cfg
    else:
        if reserved:
            part = salvage(data, None, [p for p, _ in reserved], _yaml_path)
            if part is None:
                raise ConfigError(issues)
            cfg = part.cfg

    problems: list = []
    warnings: list[str] = []
    certs = load_certificates(cfg, base_dir, problems, warnings)
    groups = normalise_ip_groups(cfg, problems, warnings)
    check_policies(cfg, problems)
    check_listeners(cfg, certs, problems, warnings)
    check_pools(cfg, problems)
    check_admin(cfg, problems)
    check_forwarding(cfg, problems)
    if resolve:
        check_resolution(cfg, problems)
    if part is not None:
        problems = [(part.file_path(path), part.file_message(path, msg))
                    for path, msg in problems if not part.is_echo(msg)]
    issues += [ConfigIssue(filename, line_of(lines, path), fmt_path(path), msg)
               for path, msg in problems]
    if issues:
        raise ConfigError(issues, tuple(warnings))
    return cfg.model_copy(update={
        "certificates": types.MappingProxyType(certs),
        "ip_groups": types.MappingProxyType(groups),
        "security_policies": types.MappingProxyType(dict(cfg.security_policies)),
        "pools": types.MappingProxyType(dict(cfg.pools)),
        "source": source,
        "warnings": tuple(warnings),
    })


def _reserved_keys(data: dict) -> list:
    """Keys the model keeps for itself must not come from YAML."""
    out = []
    certs = data.get("certificates")
    if isinstance(certs, dict):
        for name, cert in certs.items():
            if isinstance(cert, dict) and "info" in cert:
                out.append((("certificates", name, "info"), "unknown key"))
    for key in ("source", "warnings"):
        if key in data:
            out.append(((key,), "unknown key"))
    return out


def _yaml_path(loc: tuple, data: Any) -> tuple:
    """pydantic's loc names union members and tags too; keep only the parts
    that exist in the YAML, so the path reads like the file."""
    path: list = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            path.append(part)
            node = node[part]
        elif i == len(loc) - 1 and isinstance(node, dict) and isinstance(part, str) \
                and not part.startswith(("function-", "literal[", "tagged-union")):
            path.append(part)          # a missing key: name it
    return tuple(path)


def _unwrap(tp: Any) -> list[Any]:
    """Model classes reachable from an annotation (through Optional, tuple,
    dict values, Annotated, unions)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    out = []
    for arg in typing.get_args(tp):
        out += _unwrap(arg)
    return out


def _fields_at(path: tuple) -> list[str]:
    """Field names of the model(s) at a YAML path, for did-you-mean."""
    models: list = [Config]
    for part in path:
        nxt = []
        for m in models:
            if isinstance(part, str) and part in m.model_fields:
                nxt += _unwrap(m.model_fields[part].annotation)
            else:
                nxt.append(m)      # a list index or a dict key: same model below
        models = nxt
    names: list[str] = []
    for m in models:
        names += [n for n, f in m.model_fields.items() if not f.exclude]
    return names


def _message(err: dict) -> str:
    kind, msg, value = err["type"], err["msg"], err.get("input")
    if kind == "missing":
        return "required key missing"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"expected an integer, got {value!r}"
    if kind in ("float_parsing", "float_type"):
        return f"expected a number, got {value!r}"
    if kind in ("bool_parsing", "bool_type"):
        return f"expected true or false, got {value!r}"
    if kind == "literal_error":
        return f"{value!r} is not one of {msg.split('should be ', 1)[-1]}"
    if kind == "union_tag_invalid":
        return f"type {err.get('ctx', {}).get('tag')!r} is not one of " \
               f"{err.get('ctx', {}).get('expected_tags')}"
    if msg.startswith("Value error, "):
        return msg[len("Value error, "):]
    return msg


def _pydantic_issues(exc: ValidationError, data: dict, lines: dict,
                     filename: str) -> list[ConfigIssue]:
    found: dict[str, tuple[int, list[str]]] = {}
    for err in exc.errors():
        path = _yaml_path(err["loc"], data)
        if err["type"] == "extra_forbidden":
            known = _fields_at(path[:-1])
            close = difflib.get_close_matches(str(path[-1]), known, n=1)
            msg = "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
        else:
            msg = _message(err)
        key = fmt_path(path)
        line = line_of(lines, path)
        msgs = found.setdefault(key, (line, []))[1]
        if msg not in msgs:
            msgs.append(msg)
    return [ConfigIssue(filename, line, key, " or ".join(msgs))
            for key, (line, msgs) in found.items()]
