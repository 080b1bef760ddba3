"""`glmtune data check` and `glmtune train` on one conversation of N turns (default 10,000 messages), plus a few
ordinary records: wall time of each command and what the over-length policy did (from data_report.json and
skips.jsonl). Rendering and truncation are linear in the conversation's length, so this takes seconds; before
they were (500 turns: 170 s; 10,000 turns: not finished after 600 s).

    python benchmarks/long_conversation.py --turns 10000 --out runs/bench/long_conversation.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def conversation(turns: int) -> dict:
    msgs = [{"role": "system", "content": "你是老师"}]
    for i in range(turns // 2):
        msgs += [{"role": "user", "content": f"第{i}题：语速{i % 5}停顿{i % 3}"},
                 {"role": "assistant", "content": f"语速:{i % 5};停顿:{i % 3};评语:好"}]
    return {"id": "long", "messages": msgs}


def run(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "glmtune", *args], capture_output=True, text=True, env=env)
    return time.time() - t0, p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=10_000, help="messages in the long conversation (user+assistant)")
    ap.add_argument("--cutoff", type=int, default=1024)
    ap.add_argument("--model", default="tiny:glm4")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "long.jsonl"
        short = [{"messages": [{"role": "user", "content": f"语速{i}"}, {"role": "assistant", "content": f"语速:{i}"}]}
                 for i in range(7)]
        data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [conversation(args.turns), *short]) + "\n",
                        encoding="utf-8")
        check_s, check = run("data", "check", str(data))
        out = Path(tmp) / "run"
        train_s, train = run("train", f"data.train={data}", f"train.output_dir={out}", f"model.path={args.model}",
                             f"data.cutoff_len={args.cutoff}", "data.val_size=0", "train.max_steps=2",
                             "train.batch_size=8", "plan.strict=false")
        if train.returncode != 0:
            sys.exit(f"train failed ({train.returncode}):\n{train.stderr[-3000:]}")
        report = json.loads((out / "data_report.json").read_text())
        skips = [json.loads(x) for x in (out / "skips.jsonl").read_text().splitlines()]
        result = {"messages_in_conversation": len(conversation(args.turns)["messages"]), "cutoff_len": args.cutoff,
                  "data_check_s": round(check_s, 2), "data_check_rc": check.returncode,
                  "train_s": round(train_s, 2), "train_wall_s_in_summary":
                      json.loads((out / "summary.json").read_text())["wall_s"],
                  "data_report": report, "skips": skips,
                  "train_stdout_samples_line": next((x for x in train.stdout.splitlines() if x.startswith("samples:")), "")}
    print(json.dumps(result, ensure_ascii=False, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
