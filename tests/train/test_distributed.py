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
    # train() must leave the process group itself: exiting with live gloo threads can SIGABRT a rank
    (dump / f"rank{rank}_group_left.json").write_text(json.dumps(not torch.distributed.is_initialized()))
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


@pytest.fixture(scope="session")
def deepspeed_cpu_ops():
    """DeepSpeed compiles its CPU shared-memory collective once per machine (cached under
    ~/.cache/torch_extensions, ~40 s on an idle machine); build it here so test timings stay honest."""
    pytest.importorskip("deepspeed")
    from deepspeed.comm.torch import build_shm_op

    build_shm_op()


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
            "train.save_steps=2", "train.resume=never", "method.dropout=0", "plan.strict=false", *extra]


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
    assert all(json.loads((dump / f"rank{r}_group_left.json").read_text()) for r in (0, 1))

    # identical weights on both ranks; the saved adapter is that weight; and it equals the 1-process run
    w0, w1 = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    saved, one_proc = adapter(out), adapter(ref.run_dir)
    assert len(saved) == len(w0)
    print(f"max |2 ranks - 1 process| = {max((saved[k] - one_proc[k]).abs().max().item() for k in saved):.2e}")
    assert_same_adapter(saved, one_proc)
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
def test_torchrun_command_reads_flags_then_torchrun_env(monkeypatch):
    from glmtune.train.launch import torchrun_command

    none = dict(nproc=None, nnodes=None, node_rank=None, master_addr=None, master_port=None)
    for k in ("NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    cmd = torchrun_command(Namespace(items=["c.yaml"], **{**none, "nproc": 8}))
    assert cmd[1:] == ["-m", "torch.distributed.run", "--nproc_per_node", "8", "--standalone",
                       "-m", "glmtune", "train", "c.yaml"]
    monkeypatch.setenv("NNODES", "2")
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    cmd = torchrun_command(Namespace(items=[], **{**none, "nproc": 8, "master_port": 29600}))
    assert cmd[3:13] == ["--nproc_per_node", "8", "--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.1",
                         "--master_port", "29600"]
    monkeypatch.delenv("MASTER_ADDR")
    with pytest.raises(ValueError, match="--master-addr"):
        torchrun_command(Namespace(items=[], **{**none, "nproc": 8}))


def test_relaunch_refuses_to_nest_inside_torchrun(monkeypatch):
    from glmtune.config import load_config
    from glmtune.train.launch import relaunch

    monkeypatch.setenv("LOCAL_RANK", "0")
    from glmtune.errors import InputError

    with pytest.raises(InputError, match="inside torchrun"):  # a usage mistake: one line, exit 2
        relaunch(Namespace(items=[], nproc=2, nnodes=None, node_rank=None, master_addr=None, master_port=None),
                 load_config(None, []))


def test_shipped_deepspeed_configs_leave_batch_and_precision_to_trainer(tmp_path):
    from glmtune.config import load_config
    from glmtune.train.launch import deepspeed_config

    for stage, offload in [(2, False), (2, True), (3, False), (3, True)]:
        ds = deepspeed_config(load_config(None, ["distributed.backend=deepspeed", f"distributed.zero_stage={stage}",
                                                 f"distributed.offload={offload}"]))
        assert ds["zero_optimization"]["stage"] == stage
        assert ("offload_optimizer" in ds["zero_optimization"]) == offload
        assert ds["train_micro_batch_size_per_gpu"] == ds["gradient_accumulation_steps"] == "auto"
        assert ds["bf16"]["enabled"] == ds["fp16"]["enabled"] == "auto"
    own = tmp_path / "ds.json"
    own.write_text('{"zero_optimization": {"stage": 1}}')
    assert deepspeed_config(load_config(None, ["distributed.backend=deepspeed", f"distributed.deepspeed_config={own}"]))["zero_optimization"]["stage"] == 1
    with pytest.raises(FileNotFoundError, match="deepspeed_config"):
        deepspeed_config(load_config(None, ["distributed.backend=deepspeed",
                                            f"distributed.deepspeed_config={tmp_path / 'missing.json'}"]))


def test_fsdp_wraps_the_family_decoder_layer(tiny_glm4):
    from glmtune.config import load_config
    from glmtune.train.launch import fsdp_kwargs

    from transformers import TrainingArguments

    kw = fsdp_kwargs(load_config(None, [f"model.path={tiny_glm4}", "distributed.backend=fsdp"]))
    assert kw["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["Glm4DecoderLayer"]
    # transformers turns it into accelerate's FSDP2 plugin arguments without complaint
    plugin = TrainingArguments(output_dir="unused", use_cpu=True, **kw)._process_fsdp_args()
    assert plugin["fsdp_version"] == 2 and plugin["transformer_cls_names_to_wrap"] == "Glm4DecoderLayer"
    assert plugin["state_dict_type"] == "SHARDED_STATE_DICT"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CPU-only behaviour")
def test_fsdp_on_cpu_is_refused_not_silently_ddp():
    from glmtune.config import load_config
    from glmtune.train.launch import engine_kwargs

    with pytest.raises(ValueError, match="needs GPUs"):
        engine_kwargs(load_config(None, ["distributed.backend=fsdp"]), world=2)


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_doubled_batch(tmp_path, data_file, tiny_glm4):
    from glmtune.config import load_config
    from glmtune.train.trainer import train

    two, _ = check_distributed_run(tmp_path, data_file, tiny_glm4)
    # DDP checkpoints hold whole optimizer state: one process resumes the 2-process run's step-2 checkpoint
    # (same samples per step, since batch 8 x 1 = batch 4 x 2) and ends on the same adapter.
    items = items_for(data_file, tmp_path / "two_resumed", tiny_glm4, 8)
    items[items.index("train.resume=never")] = f"train.resume={two / 'checkpoints' / 'checkpoint-2'}"
    resumed = train(load_config(None, items), quiet=True)
    assert resumed.summary["resumed_from"].endswith("checkpoint-2") and resumed.summary["steps"] == 4
    assert_same_adapter(adapter(resumed.run_dir), adapter(two))


@pytest.mark.slow
def test_deepspeed_zero2_two_processes_match_one_process(tmp_path, data_file, tiny_glm4, deepspeed_cpu_ops):
    from glmtune.config import load_config
    from glmtune.train.launch import ResumeError
    from glmtune.train.trainer import train

    two, _ = check_distributed_run(tmp_path, data_file, tiny_glm4, ["distributed.backend=deepspeed"])
    ckpt = two / "checkpoints" / "checkpoint-2"
    assert len(list((ckpt / "global_step2").glob("zero_pp_rank_*_optim_states.pt"))) == 2
    # ZeRO optimizer shards cannot be read by one process: refused with the fix, not silently restarted
    items = items_for(data_file, tmp_path / "resume1", tiny_glm4, 8, "distributed.backend=deepspeed")
    items[items.index("train.resume=never")] = f"train.resume={ckpt}"
    with pytest.raises(ResumeError, match="2 processes"):
        train(load_config(None, items), quiet=True)


@pytest.mark.slow
def test_deepspeed_zero3_two_processes_match_one_process(tmp_path, data_file, tiny_glm4, deepspeed_cpu_ops):
    two, _ = check_distributed_run(tmp_path, data_file, tiny_glm4,
                                   ["distributed.backend=deepspeed", "distributed.zero_stage=3"])
    # ZeRO-3 really partitioned the weights: one model-state shard per rank (ZeRO-2 writes one whole file)
    shards = (two / "checkpoints" / "checkpoint-2" / "global_step2").glob("zero_pp_rank_*_mp_rank_00_model_states.pt")
    assert len(list(shards)) == 2


@pytest.mark.slow
def test_cli_nproc_relaunches_under_torchrun(tmp_path, data_file, tiny_glm4):
    out = tmp_path / "cli"
    items = items_for(data_file, out, tiny_glm4, 4, "train.max_steps=2")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, "-m", "glmtune", "train", *items, "--nproc", "2"], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "torch.distributed.run --nproc_per_node 2" in proc.stdout
    assert proc.stdout.count("run folder:") == 1  # rank 0 alone reports
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["effective_batch"] == 8 and summary["steps"] == 2

