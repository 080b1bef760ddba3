"""Trained tiny runs shared by the export tests (trained once per session, a few seconds each)."""

import json

import pytest


def make_run(root, name: str, *overrides: str):
    from glmtune.config import load_config
    from glmtune.train.trainer import train

    data = root / "data.jsonl"
    if not data.exists():
        rows = [{"messages": [{"role": "user", "content": f"问题 {i}：今天天气怎么样？"},
                              {"role": "assistant", "content": f"回答 {i}：语速:2;停顿:3;声母:3"}]} for i in range(12)]
        data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    out = root / name
    # A high learning rate so the adapter really moves the logits (a merge test must be able to fail).
    train(load_config(None, [f"data.train={data}", f"train.output_dir={out}", "train.max_steps=5",
                             "train.resume=never", "train.lr=0.05", "train.save_steps=1000", *overrides]))
    return out


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory):
    return tmp_path_factory.mktemp("export_runs")


@pytest.fixture(scope="session")
def lora_run(runs_root):
    return make_run(runs_root, "lora", "method.rank=4")


@pytest.fixture(scope="session")
def dora_run(runs_root):
    return make_run(runs_root, "dora", "method.rank=4", "method.use_dora=true")


@pytest.fixture(scope="session")
def run_factory(runs_root):
    return lambda name, *overrides: make_run(runs_root, name, *overrides)
