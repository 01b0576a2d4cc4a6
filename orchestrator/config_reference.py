"""docs/config.md, generated from the typed config: every key, its type, its default, and what the
comment above it (or beside it) in the source says. tests/orchestrator/test_config_reference.py fails
when the file is out of date; write it again with

    python -m maskx.orchestrator.config_reference > docs/config.md
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Iterator

import yaml

from .config import TrainConfig, TrainSource

FIELD_LINE = re.compile(r"^(\s+)(\w+): [^=]+?(?: = .*)?$")

HEADER = """# Configuration reference

Generated from the typed config (`orchestrator/config/`, `models/config.py`) by
`python -m maskx.orchestrator.config_reference > docs/config.md`; a test fails when it is out of
date. A config file is YAML with these keys (`configs/` holds the shipped ones); any key can be set
on the command line as `dotted.key=value` (the value read as YAML), e.g. `solver.lr=0.01`. An unknown
key or a wrong type is an error that names the key.
"""


def field_comments(cls) -> dict[str, str]:
    """Each field's comment in `cls`'s source: the comment lines right above it, else the one beside it."""
    comments, above = {}, []
    for line in inspect.getsourcelines(cls)[0]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        code, _, beside = line.partition("  # ")
        match = FIELD_LINE.match(code.rstrip())
        if match and not match.group(2).startswith("__"):
            comments[match.group(2)] = " ".join(above) or beside.strip()
        above = []
    return comments


def default_of(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def shown(value) -> str:
    if value is dataclasses.MISSING:
        return "(required)"
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def sections(cls, prefix: str = "") -> Iterator[tuple[str, type, list[tuple[str, str, str, str]]]]:
    """(section key, its dataclass, its rows: key, type, default, meaning), the section first, then its
    subsections (fields whose value is a config of its own) in the order they are declared."""
    comments = field_comments(cls)
    rows, nested = [], []
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        default = default_of(field)
        if dataclasses.is_dataclass(default):
            nested.append((key, type(default)))
            continue
        rows.append((key, str(field.type), shown(default), comments.get(field.name, "")))
        if field.name == "train" and cls.__name__ == "DataConfig":
            nested.append((f"{key}[]", TrainSource))
    yield prefix.rstrip(".") or "(top level)", cls, rows
    for key, child in nested:
        yield from sections(child, f"{key}.")


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference() -> str:
    lines = [HEADER]
    for key, cls, rows in sections(TrainConfig):
        lines.append(f"\n## `{key}`\n" if key != "(top level)" else "\n## Top level\n")
        doc = cls.__dict__.get("__doc__") or ""
        if doc and not doc.startswith(f"{cls.__name__}("):  # dataclasses write one from the signature
            lines.append("\n".join(line.strip() for line in inspect.cleandoc(doc).splitlines()) + "\n")
        lines.append("\n| key | type | default | meaning |\n|---|---|---|---|\n")
        lines.extend(f"| `{k}` | `{cell(t)}` | `{cell(d)}` | {cell(m)} |\n" for k, t, d, m in rows)
    return "".join(lines)


def missing_meanings() -> list[str]:
    """Keys whose source gives no comment: the reference would say nothing of them."""
    return [k for _, _, rows in sections(TrainConfig) for k, _, _, m in rows if not m]


if __name__ == "__main__":
    print(reference(), end="")
