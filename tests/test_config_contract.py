"""The config is a contract: every key the model accepts is read by the
runtime (or refused by `check`). This walks every field of the model and
fails when its name is read nowhere outside lbcore/config/: a key accepted
and silently ignored (as forwarding_policies, qps_limit and the connection
limits once were) can't come back unnoticed."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from lbcore.config.model import Config

ROOT = Path(__file__).resolve().parents[1]
# Deliberate exceptions, each with why it is read nowhere by name.
NOT_READ_BY_NAME = {
    "source": "excluded from the model's input: where the config came from",
    "warnings": "excluded from the model's input: check's warnings",
}


def model_fields(model: type[BaseModel], seen: set | None = None) -> dict[str, str]:
    """field name -> the dotted path of its first occurrence."""
    seen = set() if seen is None else seen
    out: dict[str, str] = {}
    if model in seen:
        return out
    seen.add(model)
    for name, info in model.model_fields.items():
        out.setdefault(name, f"{model.__name__}.{name}")
        for sub in _models_in(info.annotation):
            for k, v in model_fields(sub, seen).items():
                out.setdefault(k, v)
    return out


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def runtime_sources() -> str:
    files = [p for p in (ROOT / "lbcore").rglob("*.py") if "config" not in p.parts]
    files += list((ROOT / "lbcore_ext").glob("*.pyx"))
    return "\n".join(p.read_text() for p in files)


def test_every_config_key_is_read_by_the_runtime():
    text = runtime_sources()
    unread = []
    for name, where in sorted(model_fields(Config).items()):
        if name in NOT_READ_BY_NAME:
            continue
        if not re.search(rf"(\.{name}\b|[\"']{name}[\"'])", text):
            unread.append(where)
    assert not unread, f"config keys no runtime code reads: {unread}"
