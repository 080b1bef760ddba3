"""Peak memory of `glmtune export` (streamed merge + streamed verification) on random GLM-4-architecture
models of growing size, in float32 and bfloat16.

Each model is a `Glm4ForCausalLM` with random weights (GLM-4-9B's proportions: head_dim 128, 2 KV heads,
intermediate = 3.34 x hidden) and the tiny GLM-4 tokenizer (its ids fit any vocabulary), saved as one
safetensors file. A LoRA run on it (rank 8, all linear layers, 1 step at a high learning rate, so the
adapter is not zero) is made with `glmtune train`. Then, each in a fresh process measured by
`/usr/bin/time -v` (maximum resident set size, which counts every resident page, memory-mapped ones too):

  merge    `glmtune export --no-verify --size 200MB`
  export   `glmtune export --size 200MB` (merge + verify: what a user runs)
  verify   the verification alone, on the merged folder (`verify_export` in a `python -c`)

With --formats (each also in a fresh process under `/usr/bin/time -v`):

  gguf     `glmtune export --merged MERGED --format gguf --quant f16 --no-modelfile` (llama.cpp's converter in
           a subprocess, then the llama.cpp vs transformers check), MERGED being the merged folder above
  bnb      `glmtune export --merged MERGED --quant bnb4 export.size=200MB` (quantise + reload + check)
  convert  `glmtune convert SRC DST --max-shard 200MB`, SRC a remote-code ChatGLM (glm-4-9b-chat layout, the
           real glm-4-9b-chat tokenizer from tests/assets/real) copy of the same shapes, random weights

Each is repeated on the tiny GLM-4 model's run: that process's peak is the interpreter's baseline (the
same imports and code path, with weights of a few MB). The table reports the peak, the peak over that
baseline, and that growth as a fraction of the model's size on disk and of its float32 size.

    python benchmarks/export_memory.py --sizes 50M 330M 1B --dtypes float32 bfloat16 --out runs/bench/export_memory.json
    python benchmarks/export_memory.py --sizes 330M --dtypes float32 --formats gguf bnb convert

Models and runs are cached under --work (default /tmp/glmtune-export-bench); delete it to rebuild.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

# name: (hidden, layers, vocab). "330M-vocab" keeps GLM-4's real 151,552-token vocabulary on a 2-layer
# model: 92% of it is the embedding and the head, the worst case for one-tensor-at-a-time bounds.
SHAPES = {
    "tiny": (256, 2, 1024),  # the ChatGLM baseline of the convert column
    "50M": (512, 10, 16384),
    "330M": (1024, 20, 32768),
    "330M-vocab": (1024, 2, 151552),
    "1B": (2048, 16, 65536),
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


def build_model(folder: Path, name: str, dtype: str) -> dict:
    import torch
    from transformers import Glm4Config, Glm4ForCausalLM

    from glmtune.models.tiny import ensure_tiny

    hidden, layers, vocab = SHAPES[name]
    if not (folder / "config.json").exists():
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tiny = ensure_tiny("glm4")
        tcfg = json.loads((tiny / "config.json").read_text())
        cfg = Glm4Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 3.34 / 64) * 64,
                         num_hidden_layers=layers, num_attention_heads=hidden // 128, num_key_value_heads=2,
                         head_dim=128, max_position_embeddings=8192, tie_word_embeddings=False,
                         pad_token_id=tcfg["pad_token_id"], eos_token_id=tcfg["eos_token_id"], bos_token_id=None)
        torch.manual_seed(0)
        with torch.device("cpu"):
            model = Glm4ForCausalLM(cfg).to(getattr(torch, dtype))
        model.save_pretrained(tmp, max_shard_size="100GB")
        del model
        for f in tiny.iterdir():
            if f.name not in ("config.json",) and not f.name.endswith(".safetensors") and f.is_file():
                shutil.copy2(f, tmp / f.name)
        tmp.rename(folder)
    params = sum(v for v in _tensor_numels(folder).values())
    return {"params": params, "bytes_on_disk": sum(f.stat().st_size for f in folder.glob("*.safetensors"))}


def build_chatglm(folder: Path, name: str, dtype: str) -> None:
    """A remote-code ChatGLM (glm-4-9b-chat's layout and config keys) checkpoint of SHAPES[name], random weights."""
    import torch
    from safetensors.torch import save_file

    if (folder / "config.json").exists():
        return
    hidden, layers, vocab = SHAPES[name]
    heads, kv, hd, ffn = hidden // 128, 2, 128, int(hidden * 3.34 / 64) * 64
    real = Path(__file__).resolve().parents[1] / "tests" / "assets" / "real" / "glm-4-9b-chat"
    cfg = json.loads((real / "config.json").read_text())
    cfg.update(hidden_size=hidden, num_layers=layers, num_hidden_layers=layers, padded_vocab_size=vocab,
               num_attention_heads=heads, multi_query_group_num=kv, kv_channels=hd, ffn_hidden_size=ffn,
               seq_length=8192, torch_dtype=dtype)
    cfg.pop("attn_implementation", None)
    g = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)

    def rnd(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(dt)

    sd = {"transformer.embedding.word_embeddings.weight": rnd(vocab, hidden),
          "transformer.rotary_pos_emb.inv_freq": 1.0 / (10000 ** (torch.arange(0, hd // 2, 2).float() / (hd // 2))),
          "transformer.encoder.final_layernorm.weight": torch.ones(hidden, dtype=dt),
          "transformer.output_layer.weight": rnd(vocab, hidden)}
    for i in range(layers):
        p = f"transformer.encoder.layers.{i}."
        sd.update({p + "input_layernorm.weight": torch.ones(hidden, dtype=dt),
                   p + "post_attention_layernorm.weight": torch.ones(hidden, dtype=dt),
                   p + "self_attention.query_key_value.weight": rnd((heads + 2 * kv) * hd, hidden),
                   p + "self_attention.query_key_value.bias": rnd((heads + 2 * kv) * hd),
                   p + "self_attention.dense.weight": rnd(hidden, heads * hd),
                   p + "mlp.dense_h_to_4h.weight": rnd(2 * ffn, hidden),
                   p + "mlp.dense_4h_to_h.weight": rnd(hidden, ffn)})
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    del sd
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
    for f in real.iterdir():
        if f.name != "config.json":
            shutil.copy2(f, tmp / f.name)
    tmp.rename(folder)


def _tensor_numels(folder: Path) -> dict:
    from safetensors import safe_open

    out = {}
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt", backend="pread") as h:
            for k in h.keys():
                n = 1
                for d in h.get_slice(k).get_shape():
                    n *= d
                out[k] = n
    return out


def make_run(model: Path, run: Path, work: Path) -> None:
    if (run / "method.json").exists():
        return
    data = work / "data.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"问题 {i}"},
                                                        {"role": "assistant", "content": f"回答 {i}：语速:2"}]},
                                         ensure_ascii=False) for i in range(4)), encoding="utf-8")
    cmd = [sys.executable, "-m", "glmtune", "train", f"model.path={model}", f"data.train={data}", "data.val_size=0",
           f"train.output_dir={run}", "train.max_steps=1", "train.batch_size=1", "train.lr=0.05",
           "train.save_steps=1000", "train.resume=never", "method.rank=8", "plan.strict=false",
           "train.scheduler=constant", "train.warmup_steps=0", "train.warmup_ratio=0"]
    subprocess.run(cmd, check=True, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from safetensors.torch import load_file

    b = [t for k, t in load_file(str(run / "adapter" / "adapter_model.safetensors")).items() if "lora_B" in k]
    if not any(bool(t.abs().max() > 0) for t in b):
        raise RuntimeError(f"{run}: the adapter did not move (all lora_B are zero); the benchmark would verify nothing")


def plan_estimate(run: Path) -> float:
    """What `glmtune plan` predicts for this export (peak bytes, interpreter included)."""
    from glmtune.config.load import load_config
    from glmtune.plan.export_memory import export_estimate
    from glmtune.plan.facts import model_facts
    from glmtune.plan.memory import setup_from_config

    cfg = load_config(run / "config.yaml", ["export.size=200MB"])
    return export_estimate(model_facts(cfg.model.path), cfg.method.name, cfg.export, setup_from_config(cfg, seq=64))["peak_bytes"]


def peak_rss(cmd: list[str], check: bool = True) -> tuple[float, float] | tuple[float, float, str]:
    """(peak RSS in bytes, wall seconds) of `cmd` from /usr/bin/time -v; with check=False a third item, the
    command's last error line ("" when it exited 0). /usr/bin/time reports the largest of the process and
    its waited-for children (GGUF export runs llama.cpp's converter as a child)."""
    t0 = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr)
    if res.returncode != 0 and (check or m is None):
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    if check:
        return int(m.group(1)) * 1024, wall
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")] if res.returncode else []
    return int(m.group(1)) * 1024, wall, (err[-1] if err else f"exit {res.returncode}") if res.returncode else ""


def measure_formats(merged: Path, chatglm: Path | None, work: Path, formats: list[str]) -> dict:
    """Peak RSS of GGUF export, bnb export and convert (whatever their verdict: a random model's near-flat
    logits can fail the bnb check's top-1 bound; the verdict is recorded next to the figure)."""
    py = sys.executable
    res = {}
    if "gguf" in formats:
        out = work / "gguf"
        shutil.rmtree(out, ignore_errors=True)
        res["gguf"] = peak_rss([py, "-m", "glmtune", "export", "--merged", str(merged), "--format", "gguf",
                                "--quant", "f16", "--no-modelfile", "--out", str(out)], check=False)
        shutil.rmtree(out, ignore_errors=True)
    if "bnb" in formats:
        out = work / "bnb"
        shutil.rmtree(out, ignore_errors=True)
        res["bnb"] = peak_rss([py, "-m", "glmtune", "export", "--merged", str(merged), "--quant", "bnb4",
                               "--out", str(out), "export.size=200MB"], check=False)
        shutil.rmtree(out, ignore_errors=True)
    if "convert" in formats and chatglm is not None:
        out = work / "converted"
        shutil.rmtree(out, ignore_errors=True)
        res["convert"] = peak_rss([py, "-m", "glmtune", "convert", str(chatglm), str(out), "--max-shard", "200MB"])
        shutil.rmtree(out, ignore_errors=True)
    return res


def measure(run: Path, out: Path, keep: bool = False) -> dict:
    py = sys.executable
    shutil.rmtree(out, ignore_errors=True)
    merge = peak_rss([py, "-m", "glmtune", "export", "--run", str(run), "--out", str(out), "--size", "200MB",
                      "--no-verify"])
    verify = peak_rss([py, "-c", "import sys, json; from glmtune.export.verify import verify_export; "
                       "r = verify_export(sys.argv[1], sys.argv[2], dtype_name=sys.argv[3]); "
                       "assert r['passed'] and r['streamed'], r; print(json.dumps(r['per_layer'][:2]))",
                       str(run), str(out), json.loads((out / "config.json").read_text())["dtype"]])
    shutil.rmtree(out, ignore_errors=True)
    export = peak_rss([py, "-m", "glmtune", "export", "--run", str(run), "--out", str(out), "--size", "200MB"])
    verdict = json.loads((out / "verify.json").read_text())
    assert verdict["passed"] and verdict["streamed"], verdict
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return {"merge": merge, "verify": verify, "export": export}


def plan_other(model: Path, chatglm: Path | None) -> dict:
    """What `glmtune plan` predicts for the GGUF f16, bnb4 and convert rows (peak bytes)."""
    from glmtune.plan.export_memory import bnb_estimate, convert_estimate, gguf_estimate
    from glmtune.plan.facts import model_facts

    facts = model_facts(str(model))
    out = {"gguf": gguf_estimate(facts, ("f16",))["peak_bytes"],
           "bnb": bnb_estimate(facts, "bnb4", shard_size="200MB")["peak_bytes"]}
    if chatglm is not None:
        out["convert"] = convert_estimate(model_facts(str(chatglm)), "200MB")["peak_bytes"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["50M", "330M", "1B"], choices=sorted(SHAPES))
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    ap.add_argument("--formats", nargs="*", default=[], choices=["gguf", "bnb", "convert"],
                    help="also measure GGUF export, bnb4 export and/or convert on each model")
    ap.add_argument("--work", type=Path, default=Path("/tmp/glmtune-export-bench"))
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    if not Path("/usr/bin/time").exists():
        sys.exit("needs GNU time: apt-get install time")
    from glmtune.models.tiny import ensure_tiny

    args.work.mkdir(parents=True, exist_ok=True)
    tiny_run = args.work / "runs" / "tiny"
    make_run(ensure_tiny("glm4"), tiny_run, args.work)
    base = measure(tiny_run, args.work / "export-tiny", keep=bool(args.formats))
    if args.formats:
        tiny_chatglm = args.work / "models" / "tiny-chatglm"
        build_chatglm(tiny_chatglm, "tiny", "float32")
        base.update(measure_formats(args.work / "export-tiny", tiny_chatglm, args.work, args.formats))
        shutil.rmtree(args.work / "export-tiny", ignore_errors=True)
    print("baseline (tiny run): " + ", ".join(f"{k} {v[0] / 1e6:.0f} MB" for k, v in base.items()), flush=True)
    rows = []
    print(f"{'model':<12} {'dtype':<9} {'params':>7} {'size':>8} | {'merge':>14} {'verify':>14} {'export':>14} "
          f"| export growth / size, / fp32 size", flush=True)
    for name in args.sizes:
        for dtype in args.dtypes:
            model = args.work / "models" / f"{name}-{dtype}"
            info = build_model(model, name, dtype)
            run = args.work / "runs" / f"{name}-{dtype}"
            make_run(model, run, args.work)
            m = measure(run, args.work / "export", keep=bool(args.formats))
            chatglm = None
            if "convert" in args.formats:
                chatglm = args.work / "models" / f"{name}-{dtype}-chatglm"
                build_chatglm(chatglm, name, dtype)
            if args.formats:
                m.update(measure_formats(args.work / "export", chatglm, args.work, args.formats))
                shutil.rmtree(args.work / "export", ignore_errors=True)
            fp32 = info["params"] * 4
            row = {"model": name, "dtype": dtype, **info, "fp32_bytes": fp32,
                   **{f"{k}_peak_bytes": v[0] for k, v in m.items()},
                   **{f"{k}_seconds": round(v[1], 1) for k, v in m.items()},
                   **{f"{k}_growth_bytes": v[0] - base[k][0] for k, v in m.items()},
                   **{f"{k}_error": v[2] for k, v in m.items() if len(v) > 2 and v[2]},
                   "baseline_bytes": {k: v[0] for k, v in base.items()}}
            row["export_growth_over_size"] = round(row["export_growth_bytes"] / info["bytes_on_disk"], 3)
            row["export_growth_over_fp32"] = round(row["export_growth_bytes"] / fp32, 3)
            row["must_show_0.75x_fp32"] = m["export"][0] <= 0.75 * fp32 + base["export"][0]
            row["plan_estimate_bytes"] = plan_estimate(run)
            if args.formats:
                row["plan_other_bytes"] = plan_other(model, chatglm)
            rows.append(row)
            cell = lambda k: f"{m[k][0] / 1e9:5.2f} (+{(m[k][0] - base[k][0]) / 1e9:4.2f})"  # noqa: E731
            print(f"{name:<12} {dtype:<9} {info['params'] / 1e6:6.0f}M {info['bytes_on_disk'] / 1e9:6.2f}GB | "
                  f"{cell('merge'):>14} {cell('verify'):>14} {cell('export'):>14} | "
                  f"{row['export_growth_over_size']:.2f}x, {row['export_growth_over_fp32']:.2f}x "
                  f"({m['merge'][1]:.0f}/{m['verify'][1]:.0f}/{m['export'][1]:.0f} s; plan said "
                  f"{row['plan_estimate_bytes'] / 1e9:.2f})", flush=True)
            for k in args.formats:
                if k in m:
                    err = f"; {m[k][2]}" if len(m[k]) > 2 and m[k][2] else ""
                    print(f"{'':<12} {k:<9} peak {cell(k)} GB = {m[k][0] / fp32:.2f}x the fp32 size, "
                          f"{m[k][1]:.0f} s; plan said {row['plan_other_bytes'][k] / 1e9:.2f}{err}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"baseline_bytes": {k: v[0] for k, v in base.items()}, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
