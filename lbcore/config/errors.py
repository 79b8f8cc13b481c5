"""Configuration errors: every fault with its file, line and YAML path."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path}: {self.message}"


class ConfigError(Exception):
    """All the faults of one file, reported at once."""

    def __init__(self, issues: list[ConfigIssue], warnings: tuple[str, ...] = ()) -> None:
        self.issues = sorted(issues, key=lambda i: (i.line, i.path))
        self.warnings = warnings
        super().__init__("\n".join(str(i) for i in self.issues))
