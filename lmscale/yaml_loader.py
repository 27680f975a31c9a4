"""YAML's safe loader, refusing duplicate keys (`{d_model: 64, d_model: 128}` is an error, not 128), and
its errors as one line."""

from __future__ import annotations

from typing import Any

import yaml


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then overriding its keys is fine
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    problem=f"duplicate key '{key}'", problem_mark=key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def safe_load(text: str) -> Any:
    """`yaml.safe_load`, but a mapping that repeats a key raises a YAMLError marking the repeat."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def problem(error: yaml.YAMLError) -> str:
    """A YAML error as one line: what is wrong and where (`line 2, column 5`)."""
    what = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    return f"{what} at line {mark.line + 1}, column {mark.column + 1}" if mark else what
