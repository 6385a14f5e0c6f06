"""The study-file reference (docs/study-file.md), generated from the study's JSON Schema.

    grid schema --reference > docs/study-file.md

One section per object of the schema (the study, then each nested object in
name order): a row per field with its type, default and constraints, so the
page cannot drift from what ``grid validate`` accepts (``tests/test_spec.py``
fails when the page and the schema disagree).
"""

from __future__ import annotations

import json
from typing import Any

from grid.spec import RENAMED, study_json_schema

_CONSTRAINTS = {
    "minimum": ">= {}",
    "exclusiveMinimum": "> {}",
    "maximum": "<= {}",
    "exclusiveMaximum": "< {}",
    "minLength": "length >= {}",
    "maxLength": "length <= {}",
    "minItems": "items >= {}",
    "maxItems": "items <= {}",
    "pattern": "matches `{}`",
}

_HEAD = """# Study file reference

Generated from the study file's JSON Schema by `grid schema --reference`; do
not edit by hand (`tests/test_spec.py` fails when this page and the schema
disagree). A study file is YAML; every field is optional except `name`.
Checks a schema cannot state (that a layer named in `jr_layers` exists, an
attack's options against ART, the grid's size) run in `grid validate`.

**In your editor.** `grid schema --out study.schema.json` writes the schema.
With the YAML language server (VS Code's YAML extension, Neovim's yamlls,
JetBrains IDEs), either put this first line in a study file:

```yaml
# yaml-language-server: $schema=./study.schema.json
```

or map study files to it once in the editor's settings, for VS Code:

```json
"yaml.schemas": {"./study.schema.json": ["studies/*.yaml", "*.study.yaml"]}
```

Fields then complete with their allowed values, and a wrong value is
underlined before `grid validate` runs.
"""


def _anchor(name: str) -> str:
    return name.lower()


def _type(node: dict[str, Any]) -> str:
    """A readable type of a schema node, nested objects linked to their section."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})"
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return "one of " + ", ".join(f"`{v}`" for v in node["enum"])
    for key in ("anyOf", "oneOf"):
        if key in node:
            parts = []
            for option in node[key]:
                text = _type(option)
                if text not in parts:
                    parts.append(text)
            return " or ".join(parts)
    kind = node.get("type")
    if kind == "array":
        if "prefixItems" in node:
            return "[" + ", ".join(_type(i) for i in node["prefixItems"]) + "]"
        return f"list of {_type(node.get('items', {}))}"
    if kind == "object":
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            return f"map of text to {_type(extra)}"
        return "mapping"
    if kind is None:
        return "any"
    return str(kind).replace("null", "null (none)")


def _constraints(node: dict[str, Any]) -> str:
    found = []
    for options in (node, *node.get("anyOf", [])):
        for key, form in _CONSTRAINTS.items():
            if key in options:
                text = form.format(options[key])
                if text not in found:
                    found.append(text)
    return ", ".join(found)


def _default(node: dict[str, Any]) -> str:
    if "default" not in node:
        return "optional (computed)"
    value = node["default"]
    text = json.dumps(value)
    return f"`{text}`" if len(text) <= 40 else "see the object's defaults"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _section(name: str, node: dict[str, Any]) -> list[str]:
    lines = [f"## {name}", ""]
    if node.get("description"):
        lines += [_cell(node["description"]), ""]
    if "enum" in node:
        return [*lines, "One of: " + ", ".join(f"`{v}`" for v in node["enum"]), ""]
    props = node.get("properties", {})
    if not props:
        return [*lines, f"Type: {_type(node)}", ""]
    lines += ["| field | type | default | constraints | notes |", "|---|---|---|---|---|"]
    required = set(node.get("required", []))
    for field, spec in props.items():
        default = "required" if field in required else _default(spec)
        lines.append(
            f"| `{field}` | {_cell(_type(spec))} | {_cell(default)} | "
            f"{_cell(_constraints(spec))} | {_cell(spec.get('description', ''))} |"
        )
    return [*lines, ""]


def study_reference() -> str:
    """The whole reference page (Markdown)."""
    schema = study_json_schema()
    lines = [_HEAD, *_section("Study (the file's top level)", schema)]
    for name in sorted(schema.get("$defs", {})):
        lines += _section(name, schema["$defs"][name])
    lines += _renamed()
    return "\n".join(lines).rstrip() + "\n"


def _renamed() -> list[str]:
    """The renamed fields (grid.spec.RENAMED): old spellings still read, with a warning."""
    lines = [
        "## Renamed fields",
        "",
        "A study file may still use these old names: `grid` reads them as the new ones and "
        "prints one warning line naming both. Giving both is an error.",
        "",
        "| old | new |",
        "|---|---|",
    ]
    for path, new in RENAMED.items():
        lines.append(f"| `{'.'.join(path)}` | `{'.'.join((*path[:-1], new))}` |")
    return [*lines, ""]
