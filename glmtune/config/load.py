"""YAML file + `a.b=c` overrides -> RunConfig. An unknown key is an error naming its dotted path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from glmtune.config.schema import RunConfig
from glmtune.errors import GlmtuneError

# The name of the resolved config inside a run folder; glmtune/run/folder.py (the run-folder contract) takes it
# from here because config sits below run in the layering and builds every verb's config on a run's.
RUN_CONFIG = "config.yaml"


class ConfigError(GlmtuneError, ValueError):
    """A config problem, phrased for the user (file, key path, what is wrong)."""


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is a value, not a section")
        node = nxt
    node[keys[-1]] = value


VERBATIM_KEYS = {"model.chat_template"}


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """`["train.lr=5e-4", "method.name=qlora"]` -> [("train.lr", 5e-4), ...]; values are YAML scalars."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        key, raw = item.split("=", 1)
        if key.strip() in VERBATIM_KEYS:  # a Jinja template is not YAML ("[gMASK]{% for ..." fails to parse)
            out.append((key.strip(), raw or None))
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(err)}); "
                              "quote it, e.g. key='[text'") from None
        out.append((key.strip(), value))
    return out


def _yaml_problem(err: yaml.YAMLError) -> str:
    return " ".join(str(x) for x in (getattr(err, "context", None), getattr(err, "problem", None)) if x) or str(err)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a syntax error or non-UTF-8 text is a ConfigError naming `file:line:col`."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start + 1}); save the config as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {_yaml_problem(err)}") from None


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        if e["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{path}'")
        else:
            lines.append(f"  {path}: {e['msg']}")
    if len(lines) == 2:  # one problem: one line, as every other error glmtune prints
        return f"{lines[0]} {lines[1].strip()}"
    return "\n".join(lines)


def _read_tree(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a config file")
    loaded = read_yaml(path) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return loaded


def _merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, section by section; a `method` of another name replaces the base's whole."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        same_method = not (key == "method" and isinstance(old, dict) and isinstance(value, dict)
                           and value.get("name", old.get("name")) != old.get("name"))
        if isinstance(old, dict) and isinstance(value, dict) and same_method:
            out[key] = _merge(old, value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, *,
                base: str | Path | None = None, values: list[tuple[str, Any]] | None = None) -> RunConfig:
    """Read a YAML file (or start from defaults), apply overrides, validate.

    Layers, each over the one before: `base` (a run's config.yaml), the file `path`, the `section.key=value`
    `overrides`, then `values` ((dotted key, value) pairs from a verb's own flags, e.g. `serve --port`)."""
    tree: dict = {}
    sources = []
    for layer in (base, path):
        if layer:
            tree = _merge(tree, _read_tree(layer))
            sources.append(str(layer))
    source = " + ".join(sources) or "defaults"
    for key, value in [*parse_overrides(overrides or []), *(values or [])]:
        _set_dotted(tree, key, value)
    if isinstance(tree.get("method"), dict):
        from glmtune.registry import default_method

        tree["method"].setdefault("name", default_method())  # the default method, so `method.rank=16` alone works
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True, sort_keys=False)
