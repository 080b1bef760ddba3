"""Many processes: re-run `glmtune train` under torchrun, and hand DeepSpeed / FSDP settings to HF Trainer.

    glmtune train cfg.yaml --nproc 8                                   # 1 machine x 8 GPUs
    glmtune train cfg.yaml --nproc 8 --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --master-port 29500

We never build our own distributed layer: `torch.distributed.run` (torchrun) starts one process per device
and sets RANK/WORLD_SIZE/LOCAL_RANK; HF Trainer + accelerate then run DDP (the default), DeepSpeed ZeRO or
FSDP from what `engine_kwargs` puts into `TrainingArguments`. Data sharding is accelerate's: every process
draws the same seeded permutation and takes every world-th batch of it, so one optimizer step over W
processes of batch b sees exactly the samples one process with batch W*b would (test_distributed.py).

Not `accelerate launch`: with `--cpu --num_processes 2` it silently starts one process, so CPU runs and
tests would not be distributed at all; torchrun behaves the same on CPU (gloo) and GPU (nccl).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from importlib import resources
from pathlib import Path

from glmtune.errors import InputError, MissingFileError, ResumeError  # noqa: F401  (ResumeError re-exported)

# torchrun's own environment names, read when the matching flag is absent (same names torchrun reads).
ENV_NAMES = {"nproc": "NPROC_PER_NODE", "nnodes": "NNODES", "node_rank": "NODE_RANK",
             "master_addr": "MASTER_ADDR", "master_port": "MASTER_PORT"}


# ---------------------------------------------------------------------------------------------- launch
def _flag(args, name: str):
    value = getattr(args, name, None)
    if value is None:
        value = os.environ.get(ENV_NAMES[name]) or None
    return value


def torchrun_command(args) -> list[str]:
    """The torchrun command line that re-runs `glmtune train <items>` once per process.

    >>> from argparse import Namespace
    >>> torchrun_command(Namespace(items=["c.yaml", "train.lr=1e-4"], nproc=8, nnodes=2, node_rank=1,
    ...                            master_addr="10.0.0.1", master_port=29500))[3:]
    ['--nproc_per_node', '8', '--nnodes', '2', '--node_rank', '1', '--master_addr', '10.0.0.1', '--master_port', '29500', '-m', 'glmtune', 'train', 'c.yaml', 'train.lr=1e-4']
    """
    nproc = int(_flag(args, "nproc") or 1)
    nnodes = int(_flag(args, "nnodes") or 1)
    node_rank, addr, port = _flag(args, "node_rank"), _flag(args, "master_addr"), _flag(args, "master_port")
    if nproc < 1 or nnodes < 1:
        raise InputError(f"--nproc and --nnodes must be >= 1 (got nproc={nproc}, nnodes={nnodes})")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    if nnodes > 1:
        if node_rank is None or addr is None:
            raise InputError(
                f"--nnodes {nnodes}: every machine needs --node-rank (0..{nnodes - 1}) and --master-addr "
                "(the address of node 0), as flags or as NODE_RANK / MASTER_ADDR in the environment")
        if not 0 <= int(node_rank) < nnodes:
            raise InputError(f"--node-rank {node_rank} is outside 0..{nnodes - 1}")
        cmd += ["--nnodes", str(nnodes), "--node_rank", str(node_rank), "--master_addr", str(addr),
                "--master_port", str(port or 29500)]
    elif addr is None and port is None:
        cmd += ["--standalone"]  # single machine: torchrun picks a free local port itself
    else:
        cmd += ["--master_addr", str(addr or "127.0.0.1"), "--master_port", str(port or 29500)]
    config = ["--config", args.config_file] if getattr(args, "config_file", None) else []
    return cmd + ["-m", "glmtune", "train", *config, *args.items]


def relaunch(args, cfg) -> int:
    """Re-execute this `glmtune train` under torchrun; returns torchrun's exit status."""
    if os.environ.get("LOCAL_RANK") is not None:
        raise InputError("glmtune train --nproc/--nnodes was run inside torchrun already (LOCAL_RANK is set); "
                         "inside torchrun call `glmtune train` without --nproc")
    from glmtune.models.load import resolve_path

    # Fail here, once, rather than in every process; and build a `tiny:` model before N processes race to.
    resolve_path(cfg.model.path)
    if cfg.distributed.backend == "deepspeed":
        deepspeed_config(cfg)
    cmd = torchrun_command(args)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default, set here to silence its warning
    print("launching: " + " ".join(cmd), flush=True)
    return subprocess.call(cmd, env=env)


# --------------------------------------------------------------------------------------------- engines
def deepspeed_config(cfg) -> dict:
    """The DeepSpeed JSON for `distributed`: the user's own file, or a shipped one per ZeRO stage.

    Shipped files leave batch sizes, precision, clipping and bucket sizes as "auto"; HF Trainer fills
    them from TrainingArguments, so `train.*` stays the one place those are set.
    """
    d = cfg.distributed
    if d.deepspeed_config:
        path = Path(d.deepspeed_config).expanduser()
        if not path.is_file():
            raise MissingFileError(f"distributed.deepspeed_config: {path} not found")
        try:
            return json.loads(path.read_text("utf-8"))
        except json.JSONDecodeError as err:
            raise InputError(f"distributed.deepspeed_config: {path} is not valid JSON ({err})") from err
    name = f"zero{d.zero_stage}{'_offload' if d.offload else ''}.json"
    return json.loads((resources.files("glmtune") / "configs" / "deepspeed" / name).read_text("utf-8"))


def fsdp_kwargs(cfg) -> dict:
    """TrainingArguments kwargs for FSDP2 (transformers 5 form: fsdp=True + fsdp_config): full sharding,
    one unit per decoder layer of the model's family, sharded (reshardable) checkpoints."""
    from glmtune.models.families import family_of
    from glmtune.models.load import model_type_of, resolve_path

    fsdp_config = {"version": 2, "reshard_after_forward": True, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                   # torch.distributed.checkpoint shards: resumable on a different process count
                   "state_dict_type": "SHARDED_STATE_DICT", "cpu_offload": cfg.distributed.offload}
    layer = family_of(model_type_of(resolve_path(cfg.model.path))).decoder_layer
    if layer:
        fsdp_config["transformer_layer_cls_to_wrap"] = [layer]
    # else: accelerate falls back to the model's own `_no_split_modules`
    return {"fsdp": True, "fsdp_config": fsdp_config}


def engine_kwargs(cfg, world: int) -> dict:
    """Every distributed TrainingArguments kwarg, in one place (empty for a single process)."""
    import torch

    if world <= 1:
        return {}
    backend = cfg.distributed.backend
    kwargs: dict = {}
    if not torch.cuda.is_available():
        # accelerate would pick MPI on a CPU torch built with it; gloo is what torchrun CPU runs use.
        kwargs["ddp_backend"] = "gloo"
    if backend == "deepspeed":
        kwargs["deepspeed"] = deepspeed_config(cfg)
        if not torch.cuda.is_available():
            kwargs = {"deepspeed": kwargs["deepspeed"], **_deepspeed_on_cpu()}
    elif backend == "fsdp":
        if not torch.cuda.is_available():
            # accelerate enables FSDP only for GPU-type process groups; on CPU it would run plain DDP quietly
            raise InputError("distributed.backend=fsdp needs GPUs (accelerate runs FSDP only on GPU process "
                             "groups); on CPU use distributed.backend=ddp or deepspeed")
        kwargs.update(fsdp_kwargs(cfg))
    return kwargs


def _deepspeed_on_cpu() -> dict:
    """DeepSpeed without a GPU (tests, CI): TrainingArguments(use_cpu=True) would quietly run plain DDP, and
    use_cpu=False gives accelerate no backend, so it counts one process. Set up the shared state ourselves
    (DeepSpeed over gloo) and tell TrainingArguments to use it."""
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(cpu=False, backend="gloo")
    return {"use_cpu": False, "accelerator_config": {"use_configured_state": True}}


# ------------------------------------------------------------------------------------------------ resume
def checkpoint_writers(ckpt: Path) -> tuple[str, int | None]:
    """(engine, processes) that wrote an HF checkpoint folder: ("deepspeed", 4), ("hf", 2), ("hf", None)."""
    ckpt = Path(ckpt)
    steps = sorted(ckpt.glob("global_step*"))
    if steps:
        return "deepspeed", len(list(steps[-1].glob("*zero_pp_rank_*_optim_states.pt"))) or None
    ranks = list(ckpt.glob("rng_state_*.pth"))
    if ranks:
        return "hf", len(ranks)
    return "hf", 1 if (ckpt / "rng_state.pth").exists() else None


def check_resume(ckpt: str | Path | None, cfg, world: int) -> str | None:
    """Refuse, with the fix, a resume the engine would do wrongly or silently half-do; None passes through.

    - HF/DDP checkpoints hold whole (unsharded) optimizer state: any process count can resume them.
    - DeepSpeed ZeRO shards optimizer state per process: the same engine and process count must resume
      it (HF Trainer without DeepSpeed would skip the missing optimizer.pt silently and restart Adam).
    """
    if ckpt is None:
        return None
    engine, saved = checkpoint_writers(Path(ckpt))
    ds_now = cfg.distributed.backend == "deepspeed" and world > 1
    how = f"--nproc with {saved} processes in all (nproc x nnodes)" if saved else "the process count it was written with"
    if engine == "deepspeed" and not ds_now:
        raise ResumeError(
            f"checkpoint {ckpt} was written by DeepSpeed ZeRO ({saved or '?'} processes); this run does not use "
            f"DeepSpeed (backend={cfg.distributed.backend}, {world} process(es)), so its sharded optimizer state "
            f"cannot be read. Resume with distributed.backend=deepspeed and {how}, or start fresh with "
            f"train.resume=never (the adapter/weights in the checkpoint can still be loaded for inference).")
    if engine == "deepspeed" and saved and saved != world:
        raise ResumeError(
            f"checkpoint {ckpt} holds DeepSpeed ZeRO optimizer shards for {saved} processes, but this run has "
            f"{world}. ZeRO cannot re-split them by itself: resume with {how}; or convert it once with "
            f"`python -m deepspeed.checkpoint.ds_to_universal --input_folder {ckpt}/<global_stepN> "
            f"--output_folder {ckpt}/<global_stepN>_universal`, write that folder name into {ckpt}/latest_universal "
            f"and give your own distributed.deepspeed_config with \"checkpoint\": {{\"load_universal\": true}}.")
    if engine == "hf" and ds_now:
        raise ResumeError(
            f"checkpoint {ckpt} was written without DeepSpeed; DeepSpeed can only resume its own checkpoints. "
            "Resume with distributed.backend=ddp (any process count), or start fresh with train.resume=never.")
    if engine == "hf" and saved and saved != world and _rank() == 0:
        print(f"resuming {ckpt} (written by {saved} process(es)) on {world}: model and optimizer state are whole, "
              f"so this is exact; the data order continues by step count, not sample by sample.", flush=True)
    return str(ckpt)


def agree_on_resume(ckpt: str | None) -> str | None:
    """Every process resumes what rank 0 chose (a rank with a late or missing view of the folder would
    otherwise start fresh while the others resume, and the run would hang or diverge)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ckpt
    box = [ckpt]
    dist.broadcast_object_list(box, src=0)
    chosen = box[0]
    if chosen is not None and not Path(chosen).exists():
        raise ResumeError(f"rank {dist.get_rank()}: rank 0 resumes from {chosen}, which this machine cannot see; "
                          "put train.output_dir on storage shared by all machines")
    return chosen


# ---------------------------------------------------------------------------------------------- saving
@contextmanager
def full_parameters(trainer):
    """All processes enter; inside, the trained parameters are whole on every process (ZeRO-3 shards them,
    so saving on rank 0 alone would write empty tensors). A no-op for DDP and ZeRO-2."""
    engine = getattr(trainer, "model_wrapped", None)
    stage3 = getattr(engine, "zero_optimization_partition_weights", lambda: False)()
    if not stage3:
        with nullcontext():
            yield
        return
    import deepspeed

    params = [p for p in trainer.model.parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))
