"""Print the folder-level import graph of the glmtune package: `python scripts/import_graph.py [--check]`.

A node is a top-level folder of glmtune (`serve`, `train`, ...) or a top-level module (`cli`, `errors`, ...).
Every `import glmtune.X...` / `from glmtune.X ...` / relative import counts, also those inside functions
(lazy imports still tie the folders together). The vendored llama.cpp converter under export/ is skipped.
`--check` exits 1 if the graph has a cycle or if train, export or evaluate import glmtune.serve.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "glmtune"
SKIP = ("export/llama_cpp_convert",)
NO_SERVE = ("train", "export", "evaluate")


def node_of(parts: tuple[str, ...]) -> str:
    """glmtune-relative module parts -> folder-level node (`serve.engine` -> `serve`, `errors` -> `errors`)."""
    return parts[0] if parts else "__init__"


def module_parts(path: Path) -> tuple[str, ...]:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def imports_of(path: Path) -> set[tuple[str, ...]]:
    """glmtune-relative module parts imported by `path` (absolute and relative imports)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    pkg = module_parts(path) if path.name == "__init__.py" else module_parts(path)[:-1]
    found: set[tuple[str, ...]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = tuple(alias.name.split("."))
                if parts[0] == "glmtune":
                    found.add(parts[1:])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                mod = base + tuple(node.module.split(".")) if node.module else base
            elif node.module and node.module.split(".")[0] == "glmtune":
                mod = tuple(node.module.split("."))[1:]
            else:
                continue
            if mod:
                found.add(mod)
            else:  # `from glmtune import serve` / `from . import x` at the top
                found.update((alias.name,) for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(SKIP):
            continue
        src = node_of(module_parts(path))
        edges.setdefault(src, set())
        for parts in imports_of(path):
            dst = node_of(parts)
            if dst != src:
                edges[src].add(dst)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (each is at least one cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph has ~20 nodes, recursion depth is no concern
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def problems(edges: dict[str, set[str]]) -> list[str]:
    found = [f"import cycle between folders: {' <-> '.join(c)}" for c in cycles(edges)]
    found += [f"{src} imports glmtune.serve" for src in NO_SERVE if "serve" in edges.get(src, ())]
    return found


def main(argv: list[str]) -> int:
    edges = graph()
    for src in sorted(edges):
        print(f"{src:10} -> {', '.join(sorted(edges[src])) or '-'}")
    bad = problems(edges)
    for line in bad:
        print(line, file=sys.stderr)
    return 1 if bad and "--check" in argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
