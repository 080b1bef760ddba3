"""Step time of one process vs 2-process DDP / DeepSpeed ZeRO-2 / ZeRO-3 on CPU, through the real CLI.

    python benchmarks/deepspeed_cpu.py                                  # tiny:glm4, 2 processes, 40 steps
    python benchmarks/deepspeed_cpu.py --nproc 2 --steps 80 --json out.json

Each engine runs `glmtune train ... --nproc N distributed.backend=...` (torchrun + gloo) on the same
synthetic chat JSONL with the same per-device batch, so every multi-process run sees N times the samples
of the single-process one. Reported: wall time of the training loop (summary.json `wall_s`, model loading
and process start excluded), tokens/s over all ranks, and the whole command's wall time (start-up
included). CPU numbers show the engines' overhead on a tiny model, not GPU speed-ups.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENGINES = {
    "1 process": (1, []),
    "ddp": (None, ["distributed.backend=ddp"]),
    "zero2": (None, ["distributed.backend=deepspeed", "distributed.zero_stage=2"]),
    "zero3": (None, ["distributed.backend=deepspeed", "distributed.zero_stage=3"]),
}


def write_data(path: Path, n: int = 256) -> None:
    rows = [{"messages": [{"role": "user", "content": f"第{i}题 " + "请评价这段朗读。" * (1 + i % 5)},
                          {"role": "assistant", "content": f"语速:{i % 5 + 1};停顿:{i % 3 + 1};评语:" + "好" * (1 + i % 9)}]}
            for i in range(n)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def run(name: str, nproc: int, extra: list[str], args, work: Path) -> dict:
    out = work / name.replace(" ", "_")
    items = [f"data.train={work / 'data.jsonl'}", f"train.output_dir={out}", f"model.path={args.model}",
             f"train.max_steps={args.steps}", f"train.batch_size={args.batch}", "train.save_steps=100000",
             "train.resume=never", "train.group_by_length=false", "data.val_size=0", "plan.strict=false", *extra]
    cmd = [sys.executable, "-m", "glmtune", "train", *items] + (["--nproc", str(nproc)] if nproc > 1 else [])
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    total = time.time() - t0
    if proc.returncode != 0:
        return {"engine": name, "error": proc.stderr[-1500:]}
    s = json.loads((out / "summary.json").read_text())
    return {"engine": name, "processes": s["world_size"], "effective_batch": s["effective_batch"], "steps": s["steps"],
            "train_wall_s": s["wall_s"], "ms_per_step": round(1000 * s["wall_s"] / s["steps"], 1),
            "tokens_per_s": s["tokens_per_s"], "command_wall_s": round(total, 1), "loss_last": s["loss_last"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny:glm4")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=4, help="per-device batch")
    ap.add_argument("--engines", nargs="*", default=list(ENGINES), choices=list(ENGINES))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_data(work / "data.jsonl")
        for name in args.engines:
            nproc, extra = ENGINES[name]
            rows.append(run(name, nproc or args.nproc, extra, args, work))
            print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    report = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "model": args.model,
              "steps": args.steps, "per_device_batch": args.batch, "results": rows}
    print(f"\n{'engine':<10} {'procs':>5} {'eff.batch':>9} {'ms/step':>8} {'tokens/s':>9} {'command s':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['engine']:<10} failed: {r['error'][-300:]}")
            continue
        print(f"{r['engine']:<10} {r['processes']:>5} {r['effective_batch']:>9} {r['ms_per_step']:>8} "
              f"{r['tokens_per_s']:>9} {r['command_wall_s']:>9}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
