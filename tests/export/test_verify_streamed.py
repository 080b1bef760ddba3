"""Streamed (layer-by-layer) export verification: same verdict and figures as the whole-model check, one
layer resident at a time, a perturbed merged tensor caught and named, and the whole-model fallback."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import glmtune.export.verify as verify_mod
from glmtune.export.config import ExportSection
from glmtune.export.merge import ExportError
from glmtune.export.pipeline import export_run
from glmtune.utils.shards import ShardWriter
from glmtune.export.verify import _verify_whole_model, verify_export

quiet = dict(log=lambda *_: None)


def _export(run, out, dtype="float32"):
    return export_run(run, ExportSection(size="1MB", dtype=dtype, verify=False), out_dir=out, **quiet).out_dir


def _assert_agree(streamed, whole, rel):
    assert streamed["streamed"] is True
    assert streamed["passed"] == whole["passed"]
    assert streamed["prompt_ids_equal"] == whole["prompt_ids_equal"]
    assert streamed["top1_agreement"] == whole["top1_agreement"]
    assert streamed["tolerance"] == pytest.approx(whole["tolerance"], rel=1e-6)
    assert streamed["max_abs_logit"] == pytest.approx(whole["max_abs_logit"], rel=1e-5)
    # float32: both are summation-order noise (~1e-6); half precision: the export's rounding, same in both.
    for s, w in zip(streamed["per_prompt_max_abs_diff"], whole["per_prompt_max_abs_diff"]):
        assert abs(s - w) <= max(rel * w, 2e-6), (streamed["per_prompt_max_abs_diff"], whole["per_prompt_max_abs_diff"])


@pytest.mark.parametrize("case", ["lora-float32", "dora-bfloat16", "freeze", "full-llama", "lora-glm", "mts-head"])
def test_streamed_verdict_and_figures_match_the_whole_model_check(case, request, run_factory, tmp_path):
    runs = {
        "lora-float32": lambda: request.getfixturevalue("lora_run"),
        "dora-bfloat16": lambda: request.getfixturevalue("dora_run"),
        "freeze": lambda: run_factory("freeze", "method.name=freeze", "method.trainable_layers=1",
                                      "method.trainable_modules=[norm]", "train.lr=1e-3"),
        "full-llama": lambda: run_factory("full-llama", "method.name=full", "model.path=tiny:llama", "train.lr=1e-3"),
        "lora-glm": lambda: run_factory("lora-glm", "method.rank=4", "model.path=tiny:glm"),
        "mts-head": lambda: run_factory("mts", "method.rank=4", "method.modules_to_save=[lm_head]"),
    }
    run = runs[case]()
    dtype = "bfloat16" if "bfloat16" in case else "float32"
    out = _export(run, tmp_path / "e", dtype)
    streamed = verify_export(run, out, dtype_name=dtype)
    whole = _verify_whole_model(run, out, dtype_name=dtype)
    assert streamed["passed"], streamed["failure"]
    _assert_agree(streamed, whole, rel=1e-3)
    n_layers = json.loads((out / "config.json").read_text())["num_hidden_layers"]
    layers = [m["module"] for m in streamed["per_layer"]]
    assert layers == ["model.embed_tokens", *[f"model.layers.{i}" for i in range(n_layers)], "model.norm"]
    assert all(m["passed"] and m["max_abs_diff"] <= m["tolerance"] for m in streamed["per_layer"])


def test_pipeline_writes_the_streamed_record(lora_run, tmp_path):
    res = export_run(lora_run, ExportSection(size="1MB"), out_dir=tmp_path / "e", **quiet)
    record = json.loads((res.out_dir / "verify.json").read_text())
    assert record["streamed"] and record["passed"] and record["failure"] is None
    assert record["per_layer"][1]["module"] == "model.layers.0" and record["per_layer"][1]["max_abs_diff"] < 1e-4


def test_one_layer_resident_at_a_time(lora_run, tmp_path, monkeypatch):
    """The bound itself: at no point are more parameters materialised than the largest single module
    loaded whole (a decoder layer); the embedding and head are never loaded whole."""
    out = _export(lora_run, tmp_path / "e")
    resident, peak, loaded = [0], [0], []
    real_load, real_unload = verify_mod._load, verify_mod._unload

    def count(module):
        return sum(p.numel() for p in module.parameters() if p.device.type != "meta")

    def load(module, prefix, weights, device):
        real_load(module, prefix, weights, device)
        loaded.append((prefix, count(module)))
        resident[0] += count(module)
        peak[0] = max(peak[0], resident[0])

    def unload(module):
        resident[0] -= count(module)
        real_unload(module)

    monkeypatch.setattr(verify_mod, "_load", load)
    monkeypatch.setattr(verify_mod, "_unload", unload)
    record = verify_export(lora_run, out)
    assert record["passed"] and record["streamed"]
    assert resident[0] == 0
    prefixes = {p for p, _ in loaded}
    assert "model.embed_tokens." not in prefixes and "lm_head." not in prefixes
    assert {"model.layers.0.", "model.layers.1.", "model.norm."} <= prefixes
    layer_params = max(n for p, n in loaded)
    assert peak[0] == layer_params  # one module at a time, never a pair or the model
    export = {k: t.numel() for f in out.glob("model-*.safetensors") for k, t in load_file(str(f)).items()}
    biggest_layer = max(sum(n for k, n in export.items() if k.startswith(f"model.layers.{i}.")) for i in range(2))
    adapter = sum(t.numel() for t in load_file(str(lora_run / "adapter" / "adapter_model.safetensors")).values())
    assert biggest_layer <= layer_params <= biggest_layer + adapter < 0.25 * sum(export.values())


def _perturb(t: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return t + 1e-2 * t.abs().max() * torch.randn(t.shape, generator=g).to(t.dtype)


def test_perturbed_merged_tensor_fails_and_names_the_layer(lora_run, tmp_path):
    out = _export(lora_run, tmp_path / "e")
    name = "model.layers.1.mlp.down_proj.weight"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shard = out / index["weight_map"][name]
    tensors = load_file(str(shard))
    tensors[name] = _perturb(tensors[name])
    save_file(tensors, str(shard), metadata={"format": "pt"})

    record = verify_export(lora_run, out)
    assert record["passed"] is False
    assert record["first_failing_module"] == "model.layers.1"
    assert "model.layers.1" in record["failure"]
    by_module = {m["module"]: m for m in record["per_layer"]}
    assert by_module["model.layers.0"]["passed"] and by_module["model.layers.0"]["max_abs_diff"] < 1e-4
    assert by_module["model.layers.1"]["max_abs_diff"] > 10 * by_module["model.layers.1"]["tolerance"]


def test_export_with_a_perturbed_tensor_leaves_no_complete_looking_folder(lora_run, tmp_path, monkeypatch):
    """End to end: a merge that writes one wrong tensor is caught by the streamed check, the error names
    the layer, and neither the export folder nor its staging folder is left; only the failure report."""
    target = "model.layers.0.self_attn.o_proj.weight"
    real_add = ShardWriter.add

    def add(self, name, tensor):
        real_add(self, name, _perturb(tensor) if name == target else tensor)

    monkeypatch.setattr(ShardWriter, "add", add)
    out = tmp_path / "exp"
    with pytest.raises(ExportError, match=r"verification failed: .*model\.layers\.0 is the first layer"):
        export_run(lora_run, ExportSection(size="1MB"), out_dir=out, **quiet)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.verify-failed.json"]
    report = json.loads((tmp_path / "exp.verify-failed.json").read_text())
    assert report["passed"] is False and report["first_failing_module"] == "model.layers.0"


def test_architecture_it_cannot_stream_falls_back_with_a_note(lora_run, tmp_path, monkeypatch):
    monkeypatch.setattr(verify_mod, "STREAMABLE_TYPES", frozenset({"llama"}))
    lines = []
    res = export_run(lora_run, ExportSection(size="1MB"), out_dir=tmp_path / "e", log=lines.append)
    assert res.verify["passed"] and res.verify["streamed"] is False
    assert "glm4" in res.verify["note"] and "per_layer" not in res.verify
    assert sum("loads each whole model" in line for line in lines) == 1


def _random_checkpoint(folder: Path, model_type: str, tokenizer_from: Path, tied: bool = False) -> Path:
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=tied)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (tokenizer_from / f).exists():
            shutil.copy2(tokenizer_from / f, folder / f)
    return folder


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "qwen2-tied"])
def test_stream_compare_equals_whole_model_logits(model_type, tiny_glm4, tmp_path):
    """The streamed machinery on the other native families (and a head tied to the embedding, read under
    the embedding's name): its figures equal those of the two whole models."""
    from transformers import AutoModelForCausalLM

    ref = _random_checkpoint(tmp_path / "ref", model_type.removesuffix("-tied"), tiny_glm4, model_type.endswith("-tied"))
    got = tmp_path / "got"
    AutoModelForCausalLM.from_pretrained(ref, dtype=torch.bfloat16).save_pretrained(got)  # a bf16 "export"
    ids = [[5, 9, 200, 31, 7], [11, 12, 13], [40, 41, 42, 43, 44, 45, 46]]
    if model_type.endswith("-tied"):
        assert "lm_head.weight" not in load_file(str(got / "model.safetensors"))
    dev = torch.device("cpu")
    ref_m, got_m = verify_mod._skeleton(ref, dev), verify_mod._skeleton(got, dev)
    from glmtune.export.merge import checkpoint_files

    res = verify_mod._stream_compare(ref_m, verify_mod._Weights(ref_m, checkpoint_files(ref)), got_m,
                                     verify_mod._Weights(got_m, checkpoint_files(got)), ids, dev, "bfloat16")
    whole_ref = AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32).eval()
    whole_got = AutoModelForCausalLM.from_pretrained(got, dtype=torch.float32).eval()
    with torch.no_grad():
        for i, p in enumerate(ids):
            a = whole_ref(torch.tensor([p])).logits[0]
            b = whole_got(torch.tensor([p])).logits[0]
            assert res["per_prompt_max_abs_diff"][i] == pytest.approx(float((a - b).abs().max()), rel=1e-3, abs=1e-5)
            assert res["top1_agreement"][i] == float((a.argmax(-1) == b.argmax(-1)).float().mean())
    assert [m["module"] for m in res["per_module"]][1:4] == ["model.layers.0", "model.layers.1", "model.layers.2"]
    assert 0 < max(res["per_prompt_max_abs_diff"])  # bf16 rounding is seen, not hidden


def test_freeze_export_streams_the_base_with_trained_tensors_in_place(run_factory, tmp_path):
    run = run_factory("freeze", "method.name=freeze", "method.trainable_layers=1",
                      "method.trainable_modules=[norm]", "train.lr=1e-3")
    res = export_run(run, ExportSection(size="1MB"), out_dir=tmp_path / "e", **quiet)
    assert res.report["mode"] == "streaming_merge" and res.report["replaced"] > 0
    assert res.verify["passed"] and res.verify["streamed"]
    trained = load_file(str(run / "model" / "trained.safetensors"))
    merged = {k: t for f in res.out_dir.glob("model-*.safetensors") for k, t in load_file(str(f)).items()}
    assert all(torch.equal(merged[k], t) for k, t in trained.items())


def test_a_full_shard_is_written_before_the_next_tensor_is_read(lora_run, tmp_path, monkeypatch):
    """The writer never has to flush while holding a freshly read tensor: room is made before reading,
    so a full shard and a large tensor (the embedding) are never in memory together."""
    real_add, late = ShardWriter.add, []

    def add(self, name, tensor):
        size = tensor.numel() * tensor.element_size() + len(name.encode()) + 128
        if self._buf and self._buf_bytes + size > self.max_bytes:
            late.append(name)
        real_add(self, name, tensor)

    monkeypatch.setattr(ShardWriter, "add", add)
    res = export_run(lora_run, ExportSection(size="300KB", verify=False), out_dir=tmp_path / "e", **quiet)
    assert res.report["shards"] >= 3 and late == []
