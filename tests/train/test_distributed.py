"""Many processes on CPU (torchrun + gloo): DDP and DeepSpeed ZeRO train the same adapter as one process
with the whole batch, every rank holds the same weights, each sample is seen once per epoch, and only
rank 0 writes the run folder.

This file is also the torchrun worker (`python -m torch.distributed.run ... test_distributed.py DUMP k=v..`):
each rank records the samples its collator received and dumps its trainable parameters after training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
N_SAMPLES = 32


# ------------------------------------------------------------------------------------------ the worker
def run_worker(dump: Path, items: list[str]):
    """Train with `items`, recording per rank: samples/step (rankR_samples.json), trainable weights (rankR.pt)."""
    import torch
    from transformers import TrainerCallback

    from glmtune.config import load_config
    from glmtune.data import collate
    from glmtune.train.trainer import train

    rank = int(os.environ.get("RANK", "0"))
    seen: list[list[list[int]]] = []
    original = collate.PadCollator.__call__

    def recording(self, features):
        seen.append([list(f["input_ids"]) for f in features])
        return original(self, features)

    class DumpWeights(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kw):
            params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            if any(hasattr(p, "ds_id") for _, p in params):  # ZeRO-3: gather the shards first
                import deepspeed

                with deepspeed.zero.GatheredParameters([p for _, p in params]):
                    weights = {n: p.detach().clone() for n, p in params}
            else:
                weights = {n: p.detach().clone() for n, p in params}
            torch.save(weights, dump / f"rank{rank}.pt")

    dump.mkdir(parents=True, exist_ok=True)
    collate.PadCollator.__call__ = recording
    try:
        result = train(load_config(None, items), callbacks=[DumpWeights()], quiet=True)
    finally:
        collate.PadCollator.__call__ = original
    (dump / f"rank{rank}_samples.json").write_text(json.dumps(seen))
    return result


if __name__ == "__main__":
    run_worker(Path(sys.argv[1]), sys.argv[2:])
    sys.exit(0)


# ------------------------------------------------------------------------------------------- helpers
def unique_rows(n: int) -> list[dict]:
    """Every sample renders to different tokens, so token lists identify samples."""
    return [{"messages": [{"role": "user", "content": f"第{i}题 语速{i % 5 + 1} 停顿{i % 3 + 1}"},
                          {"role": "assistant", "content": f"语速:{i % 5 + 1};停顿:{i % 3 + 1};编号{i}" + "好" * (i % 4)}]}
            for i in range(n)]


@pytest.fixture
def data_file(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in unique_rows(N_SAMPLES)), encoding="utf-8")
    return p


def items_for(data, out, tiny, batch, *extra):
    # fp32, no dropout, no length grouping, one epoch: the only difference between runs is the process count
    return [f"data.train={data}", f"train.output_dir={out}", f"model.path={tiny}", "data.val_size=0",
            "train.epochs=1", f"train.batch_size={batch}", "train.grad_accum=1", "train.lr=5e-3",
            "train.warmup_steps=0", "train.scheduler=constant", "train.precision=fp32", "train.group_by_length=false",
            "train.save_steps=1000", "train.resume=never", "method.dropout=0", "plan.strict=false", *extra]


def torchrun(dump: Path, items: list[str], nproc: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    from glmtune.train.launch import torchrun_command

    cmd = torchrun_command(Namespace(items=items, nproc=nproc, nnodes=None, node_rank=None, master_addr=None,
                                     master_port=None))
    target = cmd.index("-m", 3)  # torchrun's own "-m torch.distributed.run" is at 1
    cmd[target:target + 3] = [str(HERE), str(dump)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def adapter(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def samples(dump: Path, rank: int) -> list[list[tuple]]:
    return [[tuple(s) for s in batch] for batch in json.loads((dump / f"rank{rank}_samples.json").read_text())]


def assert_same_adapter(a: dict, b: dict, atol=2e-5):
    import torch

    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=atol, msg=k)


def check_distributed_run(tmp_path, data_file, tiny, extra=()):
    """Two ranks with batch 4 vs one process with batch 8: same samples per step, same adapter."""
    import torch

    out, dump = tmp_path / "two", tmp_path / "dump2"
    torchrun(dump, items_for(data_file, out, tiny, 4, *extra))

    # one process, doubled batch, in this process (world 1: no engine, plain Trainer)
    ref_dump = tmp_path / "dump1"
    ref = run_worker(ref_dump, items_for(data_file, tmp_path / "one", tiny, 8))

    # both ranks ran, each on half of every global batch, and together they saw each sample exactly once
    r0, r1, one = samples(dump, 0), samples(dump, 1), samples(ref_dump, 0)
    assert len(r0) == len(r1) == len(one) == N_SAMPLES // 8
    for step, (a, b, whole) in enumerate(zip(r0, r1, one)):
        assert len(a) == len(b) == 4
        assert set(a) | set(b) == set(whole) and not set(a) & set(b), f"step {step}: ranks split differently"
    flat = [s for batch in r0 + r1 for s in batch]
    assert len(flat) == len(set(flat)) == N_SAMPLES

    # identical weights on both ranks; the saved adapter is that weight; and it equals the 1-process run
    w0, w1 = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    saved = adapter(out)
    assert len(saved) == len(w0)
    assert_same_adapter(saved, adapter(ref.run_dir))
    # ...and the comparison can fail: LoRA B left its zero init
    assert all(v.abs().max() > 1e-3 for k, v in saved.items() if "lora_B" in k)

    # only rank 0 wrote: one run folder, one log row per step, world size in the summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump1", "dump2", "one", "train.jsonl", "two"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["effective_batch"] == 8 and summary["steps"] == 4
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert (out / "plots" / "loss.png").exists() and not list(out.glob(".*partial"))
    return out, ref.run_dir


# --------------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_doubled_batch(tmp_path, data_file, tiny_glm4):
    check_distributed_run(tmp_path, data_file, tiny_glm4)

