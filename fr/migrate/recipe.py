"""Writing a Config as an fr recipe file: `config = Config()` and one line per field that differs from fr's defaults."""

from __future__ import annotations

import dataclasses
from typing import Any, List

from fr.config import Config


def _lines(section: Any, default: Any, prefix: str) -> List[str]:
    lines = []
    for field in dataclasses.fields(section):
        value, base = getattr(section, field.name), getattr(default, field.name)
        key = f"{prefix}.{field.name}"
        if dataclasses.is_dataclass(value):
            lines += _lines(value, base, key)
        elif value != base or type(value) is not type(base):
            lines.append(f"{key} = {value!r}")
    return lines


def recipe_text(cfg: Config, source: str) -> str:
    """The recipe's source: loaded with fr.config.load_file, it gives a Config equal to `cfg`."""
    body = "\n".join(_lines(cfg, Config(), "config"))
    return (
        f'"""fr recipe converted from {source} by fr-train --write-recipe.\n\n'
        "Fields not set here are fr's defaults.\n"
        '"""\n'
        "\n"
        "from fr.config import Config\n"
        "\n"
        "config = Config()\n"
        f"{body}\n"
    )


def write_recipe(cfg: Config, source: str, path: str) -> None:
    from evaluation.fileio import atomic_write_text

    atomic_write_text(path, recipe_text(cfg, source))
