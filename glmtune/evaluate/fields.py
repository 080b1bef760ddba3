"""Structured answers such as `语速:3;停顿:5;声母:3;韵母:3;声调:3;完整度:5;评语:...`.

Built-in specs are registered by task recipes (glmtune.tasks: the oral task registers the line above as
`oral`); any other format is a YAML file (`FieldSpec.load`).

A `FieldSpec` names the fields, their value type (int | float | str), allowed values and the
separators (half- and full-width by default, because models trained on `:`/`;` still emit `：`/`；`).
`parse_answer` turns text into values plus a validity verdict; `score_fields` turns prediction and
reference lists into the agreement metrics of `agreement.py`, per field.

Spec `glmtune-fields-1`. An answer is **format-valid** when, after stripping, it is a sequence of
`NAME KV_SEP VALUE` items joined by a pair separator, where every NAME is a field of the spec, every
field appears exactly once (any order), and every value parses to its type and lies in `allowed`.
A `str` field placed last may contain separators (a free-text comment such as 评语 often does).
Per-field values are still extracted from invalid answers, so one bad field does not hide the others.

Per field: `exact_match` is over every sample whose reference has the field (a missing or unparsable
prediction counts as wrong); MAE / Pearson / Spearman / QWK / confusion are over the pairs where both
sides parsed, and `n_pairs` / `coverage` say how many that was.

>>> spec = FieldSpec.from_dict({"name": "scores", "fields": [
...     *({"name": n, "type": "int", "allowed": [1, 2, 3, 4, 5]} for n in ("语速", "停顿", "声母", "韵母", "声调", "完整度")),
...     "评语"]})
>>> a = parse_answer("语速：3；停顿:5;声母:3;韵母:3;声调:3;完整度:5;评语:好;很好", spec)
>>> a.valid, a.values["语速"], a.values["评语"]
(True, 3, '好;很好')
>>> parse_answer("语速:9;停顿:5", spec).errors[:2]
['语速: 9 not in allowed values [1, 2, 3, 4, 5]', 'missing field 声母']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glmtune.evaluate import agreement

__all__ = ["FIELDS_SPEC", "Field", "FieldSpec", "ParsedAnswer", "parse_answer", "score_fields"]

FIELDS_SPEC = "glmtune-fields-1"
TYPES = {"int": int, "float": float, "str": str}


@dataclass(frozen=True)
class Field:
    name: str
    type: str = "str"                 # int | float | str
    allowed: tuple | None = None      # e.g. (1, 2, 3, 4, 5); None = any value of the type

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"field {self.name!r}: type must be one of {sorted(TYPES)}, got {self.type!r}")

    @property
    def numeric(self) -> bool:
        return self.type in ("int", "float")

    def convert(self, raw: str) -> tuple[Any, str | None]:
        """(value, None) or (None, error message)."""
        raw = raw.strip()
        if self.type == "str":
            value: Any = raw
        else:
            try:
                value = int(raw) if self.type == "int" else float(raw)
            except ValueError:
                return None, f"{self.name}: {raw!r} is not {self.type}"
        if self.allowed is not None and value not in self.allowed:
            return None, f"{self.name}: {raw} not in allowed values {list(self.allowed)}"
        return value, None


@dataclass(frozen=True)
class FieldSpec:
    name: str
    fields: tuple[Field, ...]
    pair_separators: tuple[str, ...] = (";", "；")
    kv_separators: tuple[str, ...] = (":", "：")

    def __post_init__(self):
        names = [f.name for f in self.fields]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"field spec {self.name!r}: field names must be non-empty and unique, got {names}")

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)

    @classmethod
    def builtin(cls, name: str) -> FieldSpec:
        """A spec a task registers by name (glmtune.tasks: `Task.field_specs`)."""
        from glmtune.registry import builtin_field_spec, field_spec_names

        spec = builtin_field_spec(name)
        if spec is None:
            raise ValueError(f"unknown built-in field spec {name!r}; built-in: {', '.join(field_spec_names())} "
                             f"(or give a YAML file)")
        return spec

    @classmethod
    def from_dict(cls, d: dict, default_name: str = "custom") -> FieldSpec:
        """`{name, fields: [{name, type, allowed}], pair_separators, kv_separators}` (YAML shape)."""
        unknown = set(d) - {"name", "fields", "pair_separators", "kv_separators"}
        if unknown:
            raise ValueError(f"field spec: unknown key(s) {sorted(unknown)}")
        fields = []
        for i, f in enumerate(d.get("fields") or []):
            if isinstance(f, str):
                f = {"name": f}
            extra = set(f) - {"name", "type", "allowed"}
            if extra or "name" not in f:
                raise ValueError(f"field spec: fields[{i}] needs 'name' and allows type/allowed, got {sorted(f)}")
            allowed = f.get("allowed")
            fields.append(Field(str(f["name"]), f.get("type", "str"), tuple(allowed) if allowed is not None else None))
        kw = {k: tuple(d[k]) for k in ("pair_separators", "kv_separators") if d.get(k)}
        return cls(d.get("name", default_name), tuple(fields), **kw)

    @classmethod
    def load(cls, ref: str | Path) -> FieldSpec:
        """A built-in spec's name (registered by a task) or a YAML file path."""
        from glmtune.registry import field_spec_names

        if str(ref) in field_spec_names():
            return cls.builtin(str(ref))
        import yaml

        from glmtune.errors import InputError, MissingFileError

        path = Path(ref)
        if not path.exists():
            raise MissingFileError(f"field spec {ref!r}: not a built-in name ({', '.join(field_spec_names())}) "
                                  f"and no such YAML file")
        try:
            return cls.from_dict(yaml.safe_load(path.read_text("utf-8")) or {}, path.stem)
        except (ValueError, TypeError, yaml.YAMLError) as err:
            raise InputError(f"{path}: {err}") from None

    def to_dict(self) -> dict:
        return {"name": self.name, "pair_separators": list(self.pair_separators), "kv_separators": list(self.kv_separators),
                "fields": [{"name": f.name, "type": f.type, "allowed": list(f.allowed) if f.allowed else None}
                           for f in self.fields]}


@dataclass
class ParsedAnswer:
    values: dict[str, Any] = field(default_factory=dict)  # field name -> typed value (only parsed ones)
    errors: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors


def _marker_regex(spec: FieldSpec) -> re.Pattern:
    # A field starts at the beginning, after a separator or after whitespace, so a name inside running
    # text ("语速很快") is not taken for a field; group 1 tells which, to check pair separators.
    # ("评分：语速:3" still yields 语速=3, and is reported invalid for its leading text.)
    alt = lambda xs: "|".join(map(re.escape, sorted(xs, key=len, reverse=True)))  # noqa: E731
    names = alt([f.name for f in spec.fields])
    seps = alt(spec.pair_separators + spec.kv_separators)
    return re.compile(rf"(^|{seps}|\s)\s*({names})\s*(?:{alt(spec.kv_separators)})")


def parse_answer(text: str | None, spec: FieldSpec) -> ParsedAnswer:
    text = (text or "").strip()
    out = ParsedAnswer()
    if not text:
        out.errors.append("empty answer")
        return out
    marks = list(_marker_regex(spec).finditer(text))
    if not marks:
        out.errors.append("no field found")
        return out
    if marks[0].start() > 0:
        out.errors.append(f"unexpected text before the first field: {text[:marks[0].start()][:30]!r}")
    seen: dict[str, int] = {}
    for i, m in enumerate(marks):
        name = m.group(2)
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        raw = text[m.end():end].strip()
        if i + 1 == len(marks):
            # a trailing pair separator after the last value is harmless ("...;评语:好;")
            raw = raw.rstrip("".join(spec.pair_separators)).strip()
        if i > 0 and m.group(1) not in spec.pair_separators:
            out.errors.append(f"missing pair separator before {name}")
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            out.errors.append(f"field {name} appears more than once")
            continue
        value, err = spec.field(name).convert(raw)
        if err:
            out.errors.append(err)
        else:
            out.values[name] = value
    out.errors.extend(f"missing field {f.name}" for f in spec.fields if f.name not in seen)
    return out


def _field_metrics(f: Field, refs: list, preds: list) -> dict:
    """refs/preds: values (None = missing) for the samples whose reference has this field."""
    n = len(refs)
    pairs = [(r, p) for r, p in zip(refs, preds) if p is not None]
    rt, pt = [r for r, _ in pairs], [p for _, p in pairs]
    m: dict = {
        "type": f.type,
        "n": n,
        "n_pairs": len(pairs),
        "coverage": len(pairs) / n if n else None,
        "exact_match": sum(r == p for r, p in zip(refs, preds)) / n if n else None,
    }
    if f.numeric:
        m.update(mae=agreement.mae(rt, pt) if pairs else None, pearson=agreement.pearson(rt, pt),
                 spearman=agreement.spearman(rt, pt))
    if f.type == "int":
        m["qwk"] = agreement.qwk(rt, pt, f.allowed)
        cm = agreement.confusion(rt, pt, f.allowed)
        m["confusion"] = {"labels": cm.labels, "matrix": cm.matrix} if cm else None
    return m


def _reason(error: str) -> str:
    """Error message without the offending text, so the report can count reasons."""
    if error.startswith("unexpected text"):
        return "unexpected text before the first field"
    error = re.sub(r": .* not in allowed values .*", ": value not in allowed values", error)
    return re.sub(r": '.*' is not (\w+)$", r": value is not \1", error)


def score_fields(predictions: Sequence[str | None], references: Sequence[str | None], spec: FieldSpec) -> dict:
    """Format validity and per-field agreement; never raises on bad text.

    Returns {"spec", "field_spec", "n", "format_validity", "valid", "invalid_references",
    "errors" (most common reasons), "fields": {name: metrics}, "per_sample": [{valid, errors}]}.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions vs {len(references)} references")
    parsed_p = [parse_answer(p, spec) for p in predictions]
    parsed_r = [parse_answer(r, spec) for r in references]
    n = len(parsed_p)
    reasons: dict[str, int] = {}
    for a in parsed_p:
        for e in a.errors:
            reasons[_reason(e)] = reasons.get(_reason(e), 0) + 1
    fields = {}
    for f in spec.fields:
        idx = [i for i in range(n) if f.name in parsed_r[i].values]
        fields[f.name] = _field_metrics(f, [parsed_r[i].values[f.name] for i in idx],
                                        [parsed_p[i].values.get(f.name) for i in idx])
    valid = sum(a.valid for a in parsed_p)
    return {
        "spec": FIELDS_SPEC,
        "field_spec": spec.to_dict(),
        "n": n,
        "valid": valid,
        "format_validity": valid / n if n else None,
        "invalid_references": sum(not a.valid for a in parsed_r),
        "errors": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:10]),
        "fields": fields,
        "per_sample": [{"valid": a.valid, "errors": a.errors, "values": a.values} for a in parsed_p],
    }
