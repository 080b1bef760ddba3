"""A method's name is matched only in its own module: every other module asks `glmtune.methods.REGISTRY`
(its flags, ranges and memory terms), so adding a method never means editing plan, config, serve or web."""

import re
from pathlib import Path

from glmtune.methods import REGISTRY

PKG = Path(__file__).resolve().parents[2] / "glmtune"
VENDORED = PKG / "export" / "llama_cpp_convert"  # llama.cpp's converter, copied as is: its own names


def test_builtin_method_names_are_quoted_only_in_methods():
    names = "|".join(sorted(REGISTRY))
    quoted = re.compile(rf"""["']({names})["']""")
    hits = []
    for path in sorted(PKG.rglob("*.py")):
        if path.is_relative_to(PKG / "methods") or path.is_relative_to(VENDORED):
            continue
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if quoted.search(line):
                hits.append(f"{path.relative_to(PKG.parent)}:{no}: {line.strip()}")
    assert not hits, "method names matched outside glmtune/methods/:\n" + "\n".join(hits)


def test_each_method_module_names_only_itself():
    names = sorted(REGISTRY)
    for name in names:
        module = PKG / "methods" / f"{name}.py"
        text = module.read_text(encoding="utf-8")
        others = [o for o in names if o != name and re.search(rf"""["']{o}["']""", text)]
        assert not others, f"{module.name} matches other methods' names: {others}"


def test_registry_holds_the_five_builtins_with_one_default():
    assert {"lora", "qlora", "ptuning", "freeze", "full"} <= set(REGISTRY)
    assert [n for n, m in REGISTRY.items() if m.default] == ["lora"]
