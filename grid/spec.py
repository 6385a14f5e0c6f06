"""The study file: reading it (YAML, a key given twice refused), validating it against the
schema, and errors that name the field.

Everything is checked here, before Ray starts: an unknown key, a wrong
type or an out-of-range value raises :class:`StudyError` naming the field
(as a dotted path) and the value.  The per-value rules are the trial's own
(``trainables.config``), so a study and a trial can never disagree.

The schema lives in :mod:`grid.sections` (one section each) and :mod:`grid.study` (the
:class:`Study` and its rules across sections); trial expansion in :mod:`grid.expand`.
They are re-exported here: ``from grid.spec import Study, load_study`` is the usual door.
"""

from __future__ import annotations

import difflib
import importlib.resources
import json
import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from grid.errors import StudyError
from grid.sections import (
    LAYER_FIELDS,
    MAX_TRIALS,
    RESULT_SCHEMES,
    Attack,
    Axes,
    DatasetChoice,
    DatasetSpec,
    JRLayersChoice,
    LayerChoices,
    Logger,
    LoggerName,
    Objective,
    Reference,
    Resources,
    SamplerName,
    Search,
    SizeMeasure,
    Strategy,
    Train,
    check_results,
)
from grid.study import Study
from trainables.modelspec import LAYER_TYPES, UNION_TAGS

__all__ = [
    "DEFAULT_STUDY",
    "LAYER_FIELDS",
    "MAX_TRIALS",
    "RENAMED",
    "RESULT_SCHEMES",
    "Attack",
    "Axes",
    "DatasetChoice",
    "DatasetSpec",
    "JRLayersChoice",
    "LayerChoices",
    "Logger",
    "LoggerName",
    "Objective",
    "Reference",
    "RenamedField",
    "Resources",
    "SamplerName",
    "Search",
    "SizeMeasure",
    "Strategy",
    "Study",
    "StudyError",
    "Train",
    "check_results",
    "embedded_studies",
    "format_errors",
    "load_study",
    "parse_study",
    "study_json_schema",
]

DEFAULT_STUDY = "default"


# ---------------------------------------------------------------------------
# Loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that rejects a key given twice in one mapping (YAML keeps the last silently)."""


def _construct_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _is_tag(loc: tuple[int | str, ...], i: int) -> bool:
    """Whether ``loc[i]`` is the tag pydantic puts after a model or a layer of a union."""
    part = loc[i]
    return (
        isinstance(part, str) and part in UNION_TAGS and i > 0
        and (isinstance(loc[i - 1], int) or loc[i - 1] == "model")
    )  # fmt: skip


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if _is_tag(loc, i):
            continue  # model.layers[3], not model.layer_list.layers[3].conv
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part and "(" in part:
            continue  # pydantic's internal step names for annotated/union types
        else:
            out += f".{part}" if out else str(part)
    return out or "study"


def _known_fields(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Field names valid at ``loc`` (for 'did you mean')."""
    current: Any = model
    for i, part in enumerate(loc[:-1]):
        if _is_tag(loc, i):
            current = UNION_TAGS[str(part)]
            continue
        if isinstance(part, int) or not (
            isinstance(current, type) and issubclass(current, BaseModel)
        ):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        current = next(
            (a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = _path(loc)
        msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if e["type"] == "extra_forbidden":
            known = _known_fields(Study, loc)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = (
                f"; did you mean {close[0]!r}?"
                if close
                else (f" (known: {', '.join(known)})" if known else "")
            )
            lines.append(f"{path}: unknown key{hint}")
        elif e["type"] in ("union_tag_invalid", "union_tag_not_found"):  # a layer's type
            ctx = e.get("ctx") or {}
            disc = str(ctx.get("discriminator", "type")).strip("'")
            tag = ctx.get("tag")
            expected = str(ctx.get("expected_tags", "")).replace("'", "") or ", ".join(LAYER_TYPES)
            close = difflib.get_close_matches(str(tag), expected.split(", "), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            what = f" = {tag!r}: unknown" if tag is not None else ": missing"
            lines.append(f"{path}.{disc}{what} (known: {expected}){hint}")
        elif not loc:  # a whole-study rule: its message names the fields
            lines.append(msg)
        elif e["type"] == "missing":
            lines.append(f"{path}: required field is missing")
        elif isinstance(
            e.get("input"), dict
        ):  # a rule over a whole section: its message names the field
            sep = (
                "." if msg.startswith(("layers[", "layers:")) else ": "
            )  # model.layers[2] (add1): ...
            lines.append(f"{path}{sep}{msg}")
        else:
            lines.append(f"{path} = {e.get('input')!r}: {msg}")
    n = len(lines)
    if n == 1:  # one problem, one line (what `grid` prints as its error)
        return f"{source}: {lines[0]}"
    head = f"{source}: {n} errors in the study file"
    return head + "\n" + "\n".join(f"  - {line}" for line in lines)


class RenamedField(FutureWarning):
    """A study file uses a field's old name: it still reads, under its new name.
    (A FutureWarning: Python shows it to users by default; ``grid`` prints it as one line.)"""


# Study-file fields renamed so that each word means one thing: path of the old field ->
# its new name in the same section.  ``search.trials`` counted distinct points, not
# trials (a point runs every fold): it is ``search.budget``.
RENAMED: dict[tuple[str, ...], str] = {("search", "trials"): "budget"}


def _renamed(data: dict[str, Any], source: str) -> dict[str, Any]:
    """``data`` with each old field name of :data:`RENAMED` moved to its new name (a
    warning each; both given: a StudyError)."""
    for path, new in RENAMED.items():
        *parents, old = path
        section: Any = data
        for key in parents:
            section = section.get(key) if isinstance(section, dict) else None
        if not isinstance(section, dict) or old not in section:
            continue
        where = ".".join(parents)
        before, after = f"{where}.{old}", f"{where}.{new}"
        if new in section:
            raise StudyError(
                f"{source}: {before} and {after}: give {after} only ({old} is its old name)"
            )
        warnings.warn(
            f"{source}: {before} is now {after} (the old name still works; rename it)",
            RenamedField,
            stacklevel=4,
        )
        moved = {(new if k == old else k): v for k, v in section.items()}
        data = _replace(data, tuple(parents), moved)
    return data


def _replace(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of ``data`` with the mapping at ``path`` replaced (the caller's dict untouched)."""
    if not path:
        return dict(value)
    head, *rest = path
    return {**data, head: _replace(data[head], tuple(rest), value) if rest else value}


def parse_study(data: Any, source: str = "<study>") -> Study:
    if not isinstance(data, dict):
        raise StudyError(
            f"{source}: the study file must be a YAML mapping of keys to values; got {type(data).__name__}"
        )
    data = _renamed(data, source)
    try:
        # JSON mode: strict types (no "10" for 10, no 2.5 for an int) that
        # still take enum names as strings.  YAML-only types (dates) become text.
        return Study.model_validate_json(json.dumps(data, default=str))
    except ValidationError as err:
        raise StudyError(format_errors(err, source)) from None


def study_json_schema() -> dict[str, Any]:
    """The study file's JSON Schema (draft 2020-12), as editors use it to complete and check YAML.

    Generated from :class:`Study` in validation mode, so it accepts the file's shorthands
    (``dataset: digits``, ``bits: 4``, ``jr_layers: none``, ``adversarial: pgd``).  Checks a
    schema cannot state (a layer name that exists, an attack's options) stay in ``grid validate``.
    """
    schema = Study.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://robustgrid.invalid/study.schema.json",
        **schema,
        "title": "robustgrid study",
    }


def embedded_studies() -> dict[str, str]:
    """The embedded studies: file name (``grid run NAME``) -> the study's ``name``."""
    out = {}
    for ref in sorted(importlib.resources.files("grid").joinpath("studies").iterdir(), key=str):
        if ref.name.endswith(".yaml") and ref.is_file():
            data = yaml.safe_load(ref.read_text())
            out[ref.name.removesuffix(".yaml")] = str((data or {}).get("name", ""))
    return out


def load_study(path: str | Path | None = None) -> Study:
    """Load and validate a study: a file, an embedded study by file name (``stq_showcase``)
    or by its ``name`` (``stq-showcase``, as ``grid run`` prints it); ``None``: the default."""
    ref = str(DEFAULT_STUDY if path is None else path)
    p = Path(ref)
    if p.is_file():
        return _parse_text(p.read_text(), str(p))
    if p.suffix == "" and "/" not in ref:
        known = embedded_studies()
        stem = ref if ref in known else next((f for f, n in known.items() if n == ref), None)
        if stem is not None:
            embedded = importlib.resources.files("grid") / "studies" / f"{stem}.yaml"
            return _parse_text(embedded.read_text(), f"<embedded {stem} study>")
        names = ", ".join(f"{f} ({n})" for f, n in known.items())
        raise StudyError(
            f"{ref}: no such study file, and no embedded study of that file name or name "
            f"(embedded: {names})"
        )
    raise StudyError(f"{ref}: no such study file")


def _parse_text(text: str, source: str) -> Study:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise StudyError(f"{source}: not valid YAML: {err}") from None
    return parse_study(data, source)
