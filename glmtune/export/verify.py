"""Check an export against the run it came from: logits of the merged folder vs base + trained part, and
the rendered prompt ids of the exported tokenizer vs the run's (a template lost in export makes the served
model ramble; LLaMA-Factory checks neither).

Streamed (the default, for the `model.layers.N` decoder stacks of STREAMABLE_TYPES): both models are built
on the meta device from their configs (no weights) and their weights are read from the safetensors files
one decoder layer at a time, with `safe_open(..., backend="pread")` so that only what is read is resident
(a memory map keeps every page it touched while the file is open). All prompts go through both models in one batch,
right-padded (causal attention: real tokens never see the padding): rows [0, N) are the reference (base
+ what the run trained; an adapter runs through PEFT's own LoRA/DoRA layers, not through our merge
code), rows [N, 2N) the merged export. Each decoder layer gets its two versions in turn, on the same input:
  * the reference rows go on with the reference layer's output and the merged rows with the merged
    layer's output, so the final logits are exactly the two whole models' logits (the verdict and
    max |Δlogit| of the whole-model check);
  * the merged layer's output on the *reference* rows vs the reference layer's output is that layer's
    own error (`per_layer` in verify.json), which names the layer a wrong tensor sits in.
The embedding is read row by row (only the prompt tokens) and the head in slices of the vocabulary, so
peak memory is one decoder layer in float32 plus activations and one head slice, whatever the model size.

Architectures it cannot stream (remote-code ChatGLM, model types outside STREAMABLE_TYPES, adapters whose
tensors it cannot place) fall back to the whole-model check, one model at a time, with a note.
"""

from __future__ import annotations

import gc
from pathlib import Path

# A few chat shapes: one turn, a system prompt, several turns (Chinese and English).
VERIFY_PROMPTS: list[list[dict]] = [
    [{"role": "user", "content": "你好，请介绍一下你自己。"}],
    [{"role": "system", "content": "You are a strict grader."}, {"role": "user", "content": "Score: the cat sat."}],
    [{"role": "user", "content": "俗话说"}, {"role": "assistant", "content": "好的。"},
     {"role": "user", "content": "继续说下去，语速:2;停顿:3"}],
]

# Default tolerance on max |Δlogit|. float32: only summation order differs (LF measured 1.7e-6).
# Half precision: rounding each merged weight to 8 (bf16) / 11 (fp16) mantissa bits moves logits by
# about that relative amount, so the bound scales with the largest logit.
_ABS = {"float32": 1e-3}
_REL = {"bfloat16": 3e-2, "float16": 5e-3}


def default_tolerance(dtype_name: str, max_abs_logit: float) -> float:
    if dtype_name in _ABS:
        return _ABS[dtype_name]
    return _REL[dtype_name] * max(1.0, max_abs_logit)


def _logits(model, prompts: list[list[int]], device: str):
    import torch

    out = []
    with torch.inference_mode():
        for ids in prompts:
            x = torch.tensor([ids], device=device)
            out.append(model(input_ids=x).logits[0].float().cpu())
    return out


def verify_export(run_dir: str | Path, export_dir: str | Path, tolerance: float | None = None,
                  dtype_name: str = "float32", device: str = "cpu",
                  prompts: list[list[dict]] | None = None, stream: bool = True, log=None) -> dict:
    """Return the verify.json record; `passed` is False when logits, a layer or prompt ids disagree.

    Streamed layer by layer when the architecture allows (module docstring); otherwise, or with
    stream=False, the whole-model check, with the reason in `note` (and one line through `log`)."""
    from glmtune.run.folder import as_run

    run = as_run(run_dir)
    why = "stream=False" if not stream else None
    if why is None:
        try:
            return _verify_streamed(run, Path(export_dir), tolerance, dtype_name, device,
                                    prompts or VERIFY_PROMPTS)
        except CannotStream as err:
            why = str(err)
    if log:
        log(f"export: verification loads each whole model in turn ({why})")
    record = _verify_whole_model(run, export_dir, tolerance, dtype_name, device, prompts)
    return _with_failure({**record, "streamed": False, "note": f"whole-model check: {why}"})


def _with_failure(record: dict) -> dict:
    """Add `failure`: what disagreed, in one line (None when the export passed)."""
    why = []
    if record["max_abs_diff"] > record["tolerance"]:
        why.append(f"max |Δlogit| {record['max_abs_diff']:.3g} > tolerance {record['tolerance']:.3g}")
    bad = [m for m in record.get("per_layer", []) if not m["passed"]]
    if bad:
        why.append(f"{bad[0]['module']} is the first layer whose output differs (max |Δ| {bad[0]['max_abs_diff']:.3g} "
                   f"> {bad[0]['tolerance']:.3g}; {len(bad)} module(s) in all)")
    if not record["prompt_ids_equal"]:
        why.append("the exported tokenizer renders the prompts differently from the run's")
    return {**record, "failure": "; ".join(why) if why else None}


def _verify_whole_model(run, export_dir: str | Path, tolerance: float | None = None,
                        dtype_name: str = "float32", device: str = "cpu",
                        prompts: list[list[dict]] | None = None) -> dict:
    """Whole-model check: base + trained part loaded as the run serves it, then the merged folder loaded
    by plain `AutoModelForCausalLM.from_pretrained`, one after the other, never together."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from glmtune.data.render import chat_ids
    from glmtune.inference.engine import HFEngine
    from glmtune.run.folder import as_run
    from glmtune.run.load import load_full_precision_adapter

    run = as_run(run)
    prompts = prompts or VERIFY_PROMPTS
    engine = HFEngine.from_run(run)
    trust = bool(getattr(engine.model.config, "auto_map", None))
    run_ids = [engine.prompt_ids(m) for m in prompts]
    quantized = _loaded_quantized(engine.model)
    ref = _logits(engine.model if quantized else engine.model.to(device), run_ids, device)
    del engine
    gc.collect()
    trained = None
    if quantized:
        # QLoRA: the export merges the adapter into the full-precision checkpoint (how QLoRA is deployed), so
        # that is the reference the merge must match; the 4-bit model it trained on differs from it by the
        # base's quantisation error, reported below, not judged.
        trained = ref
        ref = _logits(load_full_precision_adapter(run).to(device), run_ids, device)
        gc.collect()

    tok = AutoTokenizer.from_pretrained(str(export_dir), trust_remote_code=trust)
    export_ids = [chat_ids(tok, m, add_generation_prompt=True) for m in prompts]
    # Loaded in float32 so the comparison measures the merge and the export dtype's rounding only.
    merged = AutoModelForCausalLM.from_pretrained(str(export_dir), dtype=torch.float32, trust_remote_code=trust)
    got = _logits(merged.eval().to(device), run_ids, device)
    del merged
    gc.collect()

    diffs = [float((a - b).abs().max()) for a, b in zip(ref, got)]
    top1 = [float((a.argmax(-1) == b.argmax(-1)).float().mean()) for a, b in zip(ref, got)]
    max_ref = max(float(a.abs().max()) for a in ref)
    tol = tolerance if tolerance is not None else default_tolerance(dtype_name, max_ref)
    ids_equal = export_ids == run_ids
    extra = {}
    if trained is not None:
        extra["vs_quantized_training_model"] = {
            "max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(trained, got)),
            "top1_agreement": [float((a.argmax(-1) == b.argmax(-1)).float().mean()) for a, b in zip(trained, got)],
        }
    return {
        "passed": bool(max(diffs) <= tol and ids_equal),
        "max_abs_diff": max(diffs),
        "tolerance": tol,
        "per_prompt_max_abs_diff": diffs,
        "top1_agreement": top1,
        "max_abs_logit": max_ref,
        "export_dtype": dtype_name,
        "prompt_ids_equal": ids_equal,
        "prompts": prompts,
        "prompt_tokens": [len(p) for p in run_ids],
        "compared": "merged (AutoModelForCausalLM.from_pretrained, float32) vs run base + trained part"
                    + (" (base in full precision; the run trained on it quantised)" if trained is not None else ""),
        **extra,
    }


def _loaded_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


# ---- streamed verification ----------------------------------------------------------------------

# Model types whose checkpoints are `embed_tokens -> layers.N -> norm -> lm_head` with batch-independent
# layers, which is all the streamed check assumes (tests/export/test_verify_streamed.py runs each one).
STREAMABLE_TYPES = frozenset({"glm", "glm4", "llama", "qwen2", "qwen3"})

# Per-layer tolerance on max |Δ| of a layer's output (same input on both sides), relative to the largest
# value of that output: a layer output is the residual stream, whose scale varies from model to model.
# float32 only differs by summation order (merged W vs PEFT's W·x + s·B·A·x: ~1e-6 relative).
_LAYER_REL = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 5e-3}

# Vocabulary rows of the head read per slice: 16M floats (64 MB in float32) whatever the hidden size.
_HEAD_SLICE_FLOATS = 1 << 24


class CannotStream(Exception):
    """This run/export cannot be verified layer by layer; the message says why (whole-model check instead)."""


def layer_tolerance(dtype_name: str, max_abs_value: float) -> float:
    return _LAYER_REL[dtype_name] * max(1.0, max_abs_value)


def streamable(config) -> str | None:
    """Why a model of this config cannot be verified layer by layer (None when it can)."""
    if getattr(config, "auto_map", None):
        return f"remote-code model ({getattr(config, 'model_type', '?')})"
    if getattr(config, "model_type", None) not in STREAMABLE_TYPES:
        return f"model type {getattr(config, 'model_type', None)!r} is not one it streams ({sorted(STREAMABLE_TYPES)})"
    return None


def _read(file: Path, key: str, rows: tuple[int, int] | None = None):
    """One tensor read with pread (no memory map), or a row range of it through a memory map: safetensors'
    pread backend reads the whole tensor to slice it, a map touches only the rows' pages, and closing the
    file right after unmaps them."""
    from safetensors import safe_open

    if rows is None:
        with safe_open(str(file), "pt", backend="pread") as h:
            return h.get_tensor(key)
    with safe_open(str(file), "pt", backend="mmap") as h:
        return h.get_slice(key)[rows[0]:rows[1]].clone()


def _peft_candidates(name: str) -> list[str]:
    """Where a parameter of a PEFT-wrapped skeleton lives: trained tensors in the adapter file under PEFT's
    saved names (adapter name dropped, `base_model.model.` prefix), base weights in the base checkpoint."""
    import re

    if re.search(r"\.(lora_[A-Za-z_]+|modules_to_save)\.", name + "."):
        key = re.sub(r"\.(lora_[A-Za-z_]+)\.default(?=\.|$)", r".\1", name).replace(".modules_to_save.default.", ".")
        key = "base_model.model." + key
        return [key, key.removesuffix(".weight")]
    return [name.replace(".base_layer.", ".").replace(".original_module.", ".")]


class _Weights:
    """Where each parameter of a meta-device skeleton comes from (adapter tensors held in memory, the
    rest in safetensors files, later files winning), read on demand in float32 on `device`."""

    def __init__(self, model, files: list[Path], memory: dict | None = None, peft: bool = False):
        from safetensors import safe_open

        self.memory = memory or {}
        self.file_of: dict[str, Path] = {}
        for f in files:
            with safe_open(str(f), "pt", backend="pread") as h:
                self.file_of.update(dict.fromkeys(h.keys(), f))
        aliases: dict[int, list[str]] = {}  # tied parameters (lm_head = embed_tokens) share one tensor
        for n, p in model.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(p), []).append(n)
        self.key: dict[str, str] = {}
        self.missing: list[str] = []
        for names in aliases.values():
            cands = [c for n in names for c in (_peft_candidates(n) if peft else [n])]
            found = next((c for c in cands if c in self.memory or c in self.file_of), None)
            if found is None:
                self.missing.append(names[0])
            self.key.update(dict.fromkeys(names, found))
        self.unused_memory = sorted(set(self.memory) - set(self.key.values()))

    def get(self, name: str, device, rows: tuple[int, int] | None = None):
        import torch

        key = self.key[name]
        if key in self.memory:
            t = self.memory[key] if rows is None else self.memory[key][rows[0]:rows[1]]
        else:
            t = _read(self.file_of[key], key, rows)
        return t.to(device=device, dtype=torch.float32 if t.is_floating_point() else t.dtype)


def _load(module, prefix: str, weights: _Weights, device) -> None:
    from accelerate.utils import set_module_tensor_to_device

    for n, _ in list(module.named_parameters()):
        set_module_tensor_to_device(module, n, device, value=weights.get(prefix + n, device))


def _unload(module) -> None:
    from accelerate.utils import set_module_tensor_to_device

    from glmtune.utils.memory import release_freed_memory

    for n, _ in list(module.named_parameters()):
        set_module_tensor_to_device(module, n, "meta")
    release_freed_memory()




def _skeleton(folder: Path, device):
    """The model of `folder`'s config on the meta device (buffers such as RoPE frequencies are real)."""
    import torch
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import AutoConfig, AutoModelForCausalLM

    from glmtune.models.chatglm6b import register

    register()  # a converted ChatGLM-6B base is glmtune's own class
    config = AutoConfig.from_pretrained(str(folder))
    why = streamable(config)
    if why:
        raise CannotStream(why)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.tie_weights()  # not done on the meta device; a tied head is then read under the embedding's name
    for n, b in list(model.named_buffers()):
        set_module_tensor_to_device(model, n, device, value=b)
    return model.eval()


def _reference(run, device):
    """(skeleton, weights) of base + what the run trained: a PEFT adapter on the base, freeze's trained
    tensors over the base, or a full run's own checkpoint."""
    from glmtune.export.merge import checkpoint_files

    base, artifact = run.base_path, run.artifact
    if run.is_adapter:
        from peft import PeftConfig, PeftModel
        from peft.utils import load_peft_weights

        wrapped = PeftModel(_skeleton(base, device), PeftConfig.from_pretrained(str(artifact)), low_cpu_mem_usage=True)
        model = wrapped.get_base_model().eval()
        weights = _Weights(model, checkpoint_files(base), memory=load_peft_weights(str(artifact), device="cpu"),
                           peft=True)
        if weights.unused_memory:
            raise CannotStream(f"adapter tensors it cannot place: {weights.unused_memory[:3]}")
    elif (artifact / "trained.safetensors").exists():  # freeze: trained tensors over the base
        model = _skeleton(base, device)
        weights = _Weights(model, checkpoint_files(base) + [artifact / "trained.safetensors"])
    elif (artifact / "config.json").exists():  # full: a complete checkpoint
        model = _skeleton(artifact, device)
        weights = _Weights(model, checkpoint_files(artifact))
    else:
        raise CannotStream(f"{artifact} holds neither an adapter nor weights it knows")
    if weights.missing:
        raise CannotStream(f"reference tensors it cannot find: {weights.missing[:3]}")
    return model, weights


def _first(out):
    return out if not isinstance(out, tuple) else out[0]


class _Compare:
    """State shared by the pair modules: row split, valid positions, per-module errors."""

    def __init__(self, ref_w: _Weights, mrg_w: _Weights, n: int, valid, device, dtype_name: str):
        self.ref_w, self.mrg_w, self.n, self.valid, self.device = ref_w, mrg_w, n, valid, device
        self.dtype_name = dtype_name
        self.per_module: list[dict] = []

    def record(self, name: str, ref, got) -> None:
        v = self.valid
        diff = float((ref - got).abs().amax(-1)[v].max())
        scale = float(ref.abs().amax(-1)[v].max())
        tol = layer_tolerance(self.dtype_name, scale)
        self.per_module.append({"module": name, "max_abs_diff": diff, "max_abs_value": scale, "tolerance": tol,
                                "passed": diff <= tol})


def _pair_class():
    import torch

    class Pair(torch.nn.Module):
        """Stands in for one module of the merged model: runs the reference and the merged version in turn
        (each loaded only for its call) on the same input and passes each side's rows on."""

        def __init__(self, name: str, ref, mrg, cmp: _Compare, embedding: bool = False):
            super().__init__()
            self.name, self.cmp, self.embedding = name, cmp, embedding
            self.sides = [(ref, cmp.ref_w), (mrg, cmp.mrg_w)]  # a plain list: not submodules of the driver

        def _run(self, module, weights, x, args, kwargs):
            if self.embedding and type(module) is torch.nn.Embedding:
                # Only the prompts' rows of the embedding are read, not the whole table.
                uniq = torch.unique(x)
                rows = torch.cat([weights.get(self.name + ".weight", self.cmp.device, (int(i), int(i) + 1))
                                  for i in uniq])
                return rows[torch.searchsorted(uniq, x)]
            _load(module, self.name + ".", weights, self.cmp.device)
            try:
                return module(x, *args, **kwargs)
            finally:
                _unload(module)

        def forward(self, x, *args, **kwargs):
            if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None:
                raise RuntimeError("streamed verification runs without a KV cache")
            outs = [self._run(module, weights, x, args, kwargs) for module, weights in self.sides]
            ref, got = _first(outs[0]), _first(outs[1])
            n = self.cmp.n
            self.cmp.record(self.name, ref[:n], got[:n])
            y = torch.cat([ref[:n], got[n:]])
            return y if not isinstance(outs[1], tuple) else (y, *outs[1][1:])

    return Pair


def _head_logits(module, name: str, weights: _Weights, h, device, rows: tuple[int, int], full=None):
    """Logits of vocabulary rows [a, b) from hidden states `h`: a slice of the head's weight when the head
    is a plain Linear, else a slice of `full` (the module's whole output, computed once by the caller)."""
    import torch

    if full is not None:
        return full[..., rows[0]:rows[1]]
    from glmtune.utils.memory import release_freed_memory

    out = h @ weights.get(name + ".weight", device, rows).T
    if getattr(module, "bias", None) is not None:
        out = out + weights.get(name + ".bias", device, rows)
    release_freed_memory()
    return out


def _stream_compare(ref_model, ref_w: _Weights, mrg_model, mrg_w: _Weights, ids: list[list[int]], device,
                    dtype_name: str, trained: list | None = None) -> dict:
    import torch

    from glmtune.methods.freeze import decoder_layers

    names = {id(m): n for n, m in mrg_model.named_modules()}
    embed, head = mrg_model.get_input_embeddings(), mrg_model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or id(head) not in names or id(embed) not in names:
        raise CannotStream(f"{type(mrg_model).__name__}: head or embedding is not a plain Linear/Embedding")
    embed_name, head_name = names[id(embed)], names[id(head)]
    layers_name, mrg_layers = decoder_layers(mrg_model)
    ref_named = dict(ref_model.named_modules())
    ref_layers = ref_named.get(layers_name)
    if ref_layers is None or len(ref_layers) != len(mrg_layers):
        raise CannotStream(f"reference and export differ in {layers_name}")
    # Parameter-holding modules outside the layers, embedding and head (the final norm).
    skip = (layers_name + ".", embed_name + ".", head_name + ".")
    others = sorted({n.rsplit(".", 1)[0] for n, _ in mrg_model.named_parameters() if not n.startswith(skip)})

    n = len(ids)
    width = max(len(p) for p in ids)
    x = torch.zeros(2 * n, width, dtype=torch.long)
    valid = torch.zeros(n, width, dtype=torch.bool)
    for i, p in enumerate(ids):
        x[i, :len(p)] = x[n + i, :len(p)] = torch.tensor(p)
        valid[i, :len(p)] = True
    cmp = _Compare(ref_w, mrg_w, n, valid.to(device), device, dtype_name)
    pair = _pair_class()

    def swap(name: str, embedding: bool = False):
        parent, _, child = name.rpartition(".")
        owner = mrg_model.get_submodule(parent) if parent else mrg_model
        setattr(owner, child, pair(name, ref_named[name], mrg_model.get_submodule(name), cmp, embedding))

    for i in range(len(mrg_layers)):
        swap(f"{layers_name}.{i}")
    swap(embed_name, embedding=True)
    for name in others:
        swap(name)
    decoder = mrg_model.base_model
    with torch.inference_mode():
        h = decoder(input_ids=x.to(device), use_cache=False).last_hidden_state

        # The head, one slice of the vocabulary at a time: per prompt max |Δlogit|, largest logit, top-1.
        ref_head = ref_named[head_name]
        full = None
        if type(ref_head) is not torch.nn.Linear:  # e.g. a trained head in PEFT's modules_to_save wrapper
            _load(ref_head, head_name + ".", ref_w, device)
            full = ref_head(h[:n])
            _unload(ref_head)
        vocab = head.weight.shape[0]
        step = max(1, _HEAD_SLICE_FLOATS // head.weight.shape[1])
        diff = torch.zeros(n, device=device)
        max_ref = torch.zeros(n, device=device)
        drift = torch.zeros(n, device=device)
        best = [[torch.full((n, width), -float("inf"), device=device), torch.zeros(n, width, dtype=torch.long, device=device)]
                for _ in range(2)]
        neg = ~cmp.valid
        for a in range(0, vocab, step):
            rows = (a, min(vocab, a + step))
            lr = _head_logits(ref_head, head_name, ref_w, h[:n], device, rows, full)
            lm = _head_logits(head, head_name, mrg_w, h[n:], device, rows)
            diff = torch.maximum(diff, (lr - lm).abs().amax(-1).masked_fill(neg, 0).amax(-1))
            max_ref = torch.maximum(max_ref, lr.abs().amax(-1).masked_fill(neg, 0).amax(-1))
            if trained is not None:
                for i, t in enumerate(trained):
                    d = (t[:, rows[0]:rows[1]].to(device) - lm[i, :t.shape[0]]).abs().max()
                    drift[i] = torch.maximum(drift[i], d)
            for (val, idx), logits in zip(best, (lr, lm)):
                v, j = logits.max(-1)
                better = v > val
                val.copy_(torch.where(better, v, val))
                idx.copy_(torch.where(better, j + a, idx))
    same = (best[0][1] == best[1][1]) & cmp.valid
    top1 = [float(same[i].sum() / cmp.valid[i].sum()) for i in range(n)]
    out = {"per_prompt_max_abs_diff": diff.cpu().tolist(), "max_abs_logit": float(max_ref.max()),
           "top1_agreement": top1, "per_module": cmp.per_module, "merged_top1": best[1][1].cpu()}
    if trained is not None:
        out["drift"] = drift.cpu().tolist()
    return out


def _verify_streamed(run, export_dir: Path, tolerance, dtype_name: str, device: str,
                     prompts: list[list[dict]]) -> dict:
    import torch
    from transformers import AutoTokenizer

    from glmtune.data.render import chat_ids
    from glmtune.export.merge import ExportFailure, checkpoint_files
    from glmtune.methods import get
    from glmtune.run.load import load_run_tokenizer

    trust = run.trust_remote_code
    dev = torch.device(device)
    ref_model, ref_w = _reference(run, dev)  # raises CannotStream before anything heavy runs
    mrg_model = _skeleton(export_dir, dev)
    mrg_w = _Weights(mrg_model, checkpoint_files(export_dir))
    if mrg_w.missing:
        raise ExportFailure(f"export verification failed: {export_dir} lacks tensors {mrg_w.missing[:3]}")

    # Prompt ids as the run renders them (the tokenizer the run's engine loads, with the template the run trained
    # with, a `model.chat_template` override included) and as the export does.
    cfg = run.config
    run_tok = load_run_tokenizer(run)
    run_ids = [chat_ids(run_tok, m, add_generation_prompt=True) for m in prompts]
    export_tok = AutoTokenizer.from_pretrained(str(export_dir), trust_remote_code=trust)
    ids_equal = [chat_ids(export_tok, m, add_generation_prompt=True) for m in prompts] == run_ids

    trained = None
    if get(run.method).quantization(cfg.method, cfg.train) is not None:
        # QLoRA: the reference is the full-precision base + adapter (what the export merges); the gap to the
        # 4-bit model the run trained on is the base's quantisation error, reported, not judged. That model
        # is loaded whole (4-bit: about a quarter of the float32 size), before the streamed pass.
        from glmtune.inference.engine import HFEngine

        engine = HFEngine.from_run(run)
        trained = _logits(engine.model, run_ids, device)
        del engine
        gc.collect()

    res = _stream_compare(ref_model, ref_w, mrg_model, mrg_w, run_ids, dev, dtype_name, trained)
    diffs = res["per_prompt_max_abs_diff"]
    tol = tolerance if tolerance is not None else default_tolerance(dtype_name, res["max_abs_logit"])
    bad = [m["module"] for m in res["per_module"] if not m["passed"]]
    extra = {}
    if trained is not None:
        merged_top1 = res["merged_top1"]
        extra["vs_quantized_training_model"] = {
            "max_abs_diff": max(res["drift"]),
            "top1_agreement": [float((t.argmax(-1) == merged_top1[i, :t.shape[0]]).float().mean())
                               for i, t in enumerate(trained)],
        }
    return _with_failure({
        "passed": bool(max(diffs) <= tol and ids_equal and not bad),
        "max_abs_diff": max(diffs),
        "tolerance": tol,
        "per_prompt_max_abs_diff": diffs,
        "top1_agreement": res["top1_agreement"],
        "max_abs_logit": res["max_abs_logit"],
        "export_dtype": dtype_name,
        "prompt_ids_equal": ids_equal,
        "prompts": prompts,
        "prompt_tokens": [len(p) for p in run_ids],
        "streamed": True,
        "first_failing_module": bad[0] if bad else None,
        "per_layer": res["per_module"],
        "compared": "merged folder vs run base + trained part, streamed layer by layer in float32"
                    + (" (base in full precision; the run trained on it quantised)" if trained is not None else ""),
        **extra,
    })
