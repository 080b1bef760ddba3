"""The folder-level import graph of glmtune (scripts/import_graph.py): train, export and evaluate never import
glmtune.serve (a run's model comes from glmtune.run, generation from glmtune.inference), and the folders form
no cycle."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
graph_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(graph_mod)

def test_train_export_evaluate_do_not_import_serve():
    edges = graph_mod.graph()
    for folder in ("train", "export", "evaluate"):
        assert "serve" not in edges[folder], f"glmtune.{folder} imports glmtune.serve"


def test_no_cycle_between_folders():
    edges = graph_mod.graph()
    assert graph_mod.cycles(edges) == [], "the folders of glmtune must form a DAG (see docs/architecture.md)"
    assert graph_mod.problems(edges) == []


def test_low_layers_import_no_stage_task_or_method():
    """config and the registry sit under every stage: they find methods and tasks through glmtune.registry."""
    edges = graph_mod.graph()
    assert edges["registry"] <= {"utils"}
    assert edges["config"] <= {"errors", "registry", "utils"}
    # tasks/ is a plug-in on top: the registry loads it by name, no other folder (not even cli or web) imports it
    assert [src for src, targets in edges.items() if "tasks" in targets] == []


def test_check_exits_0():
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_graph.py"), "--check"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_cycle_finder_finds_a_cycle():
    assert graph_mod.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert graph_mod.problems({"train": {"serve"}, "serve": set()}) == ["train imports glmtune.serve"]


def test_script_prints_the_graph():
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_graph.py")], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    rows = {src.strip(): set(dst.split(", ")) for src, dst in (line.split(" -> ") for line in p.stdout.splitlines())}
    assert set(rows) >= {"run", "inference", "serve", "train", "export", "evaluate"}
    assert "serve" not in rows["train"] and "run" in rows["export"] and "inference" in rows["serve"]
