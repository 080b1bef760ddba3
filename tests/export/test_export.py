"""Streaming export: shard limits, index, merged == adapter (and == PEFT's own merge), template kept,
atomicity under a crash, and verification that can fail."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from glmtune.export.config import ExportSection
from glmtune.export.merge import ExportError, checkpoint_keys
from glmtune.export.pipeline import export_run
from glmtune.utils.shards import parse_size


def _shard_tensors(out: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for f in sorted(out.glob("model*.safetensors")):
        with safe_open(str(f), "pt") as h:
            tensors.update({k: h.get_tensor(k) for k in h.keys()})
    return tensors


def _peft_merged_state(run):
    from glmtune.inference.engine import HFEngine

    engine = HFEngine.from_run(run)
    return {k: v.detach().clone() for k, v in engine.model.merge_and_unload().state_dict().items()}


def test_parse_size():
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("200KB") == 200_000
    assert parse_size("1.5 MB") == 1_500_000
    assert parse_size("1GiB") == 2**30
    with pytest.raises(ValueError, match="export.size"):
        parse_size("two gigs")
    with pytest.raises(Exception, match="export.size"):
        ExportSection(size="lots")


@pytest.mark.parametrize("run_name", ["lora_run", "dora_run"])
def test_streaming_merge_shards_and_matches_adapter(run_name, request, tmp_path):
    run = request.getfixturevalue(run_name)
    limit = "1MB"  # just above the largest tiny tensor (852 KB), so several shards and none oversized
    res = export_run(run, ExportSection(size=limit), out_dir=tmp_path / "exp", log=lambda *_: None)
    out = res.out_dir
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) >= 3
    assert all(f.stat().st_size <= parse_size(limit) for f in shards), [f.stat().st_size for f in shards]
    assert res.report["mode"] == "streaming_merge" and res.report["oversized_tensors"] == []
    assert res.report["max_buffered_bytes"] <= parse_size(limit)  # never more than one shard held
    assert res.report["dora"] == (run_name == "dora_run")

    # The index is complete and consistent with the files.
    index = json.loads((out / "model.safetensors.index.json").read_text())
    base = Path(json.loads((run / "method.json").read_text())["base"])
    assert set(index["weight_map"]) == checkpoint_keys(base)
    assert set(index["weight_map"].values()) == {f.name for f in shards}
    tensors = _shard_tensors(out)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())

    # Merged weights equal PEFT's own merge_and_unload (LoRA and DoRA math).
    peft_state = _peft_merged_state(run)
    assert set(peft_state) == set(tensors)
    worst = max(float((peft_state[k] - tensors[k]).abs().max()) for k in tensors)
    assert worst < 1e-5, worst

    # Verification ran, passed, and was not vacuous: the adapter really changes the logits.
    verify = json.loads((out / "verify.json").read_text())
    assert verify["passed"] and verify["max_abs_diff"] <= 1e-3 and verify["prompt_ids_equal"]
    from transformers import AutoModelForCausalLM

    base_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged_model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.tensor([[3, 10, 20, 30, 40, 50]])
    with torch.no_grad():
        moved = float((base_model(ids).logits - merged_model(ids).logits).abs().max())
    assert moved > 100 * verify["max_abs_diff"], moved


def test_template_and_generation_config_preserved(lora_run, tmp_path):
    from transformers import AutoTokenizer

    from glmtune.data.render import chat_ids

    out = export_run(lora_run, ExportSection(size="2GB", verify=False), out_dir=tmp_path / "e", log=lambda *_: None).out_dir
    run_tok = AutoTokenizer.from_pretrained(lora_run / "tokenizer")
    exp_tok = AutoTokenizer.from_pretrained(out)
    assert exp_tok.chat_template == run_tok.chat_template
    msgs = [{"role": "system", "content": "评分"}, {"role": "user", "content": "俗话说"}]
    assert chat_ids(exp_tok, msgs, add_generation_prompt=True) == chat_ids(run_tok, msgs, add_generation_prompt=True)
    base = Path(json.loads((lora_run / "method.json").read_text())["base"])
    assert json.loads((out / "generation_config.json").read_text()) == json.loads((base / "generation_config.json").read_text())
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert (out / "model.safetensors").exists() and (out / "model.safetensors.index.json").exists()


def test_oversized_tensor_gets_its_own_shard(lora_run, tmp_path):
    limit = parse_size("200KB")
    res = export_run(lora_run, ExportSection(size="200KB", verify=False), out_dir=tmp_path / "e", log=lambda *_: None)
    assert "model.embed_tokens.weight" in res.report["oversized_tensors"]
    for f in res.out_dir.glob("model-*.safetensors"):
        with safe_open(str(f), "pt") as h:
            n = len(list(h.keys()))
        assert f.stat().st_size <= limit or n == 1, (f.name, f.stat().st_size, n)


def test_bfloat16_export(dora_run, tmp_path):
    res = export_run(dora_run, ExportSection(dtype="bfloat16"), out_dir=tmp_path / "bf16", log=lambda *_: None)
    assert {t.dtype for t in _shard_tensors(res.out_dir).values()} == {torch.bfloat16}
    assert json.loads((res.out_dir / "config.json").read_text())["dtype"] == "bfloat16"
    assert res.verify["passed"] and res.verify["export_dtype"] == "bfloat16"
    assert min(res.verify["top1_agreement"]) > 0.9


def test_crash_mid_write_leaves_nothing_that_looks_complete(lora_run, tmp_path, monkeypatch):
    import glmtune.utils.shards as shards

    out = tmp_path / "exp"
    export_run(lora_run, ExportSection(size="1MB", verify=False), out_dir=out, log=lambda *_: None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real, calls = shards.save_file, []

    def crash_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(*a, **k)

    monkeypatch.setattr(shards, "save_file", crash_on_second)
    with pytest.raises(OSError, match="simulated"):
        export_run(lora_run, ExportSection(size="1MB", verify=False), out_dir=out, log=lambda *_: None)
    # The earlier complete export is untouched, and no partial folder is left beside it.
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]
    # A first export that crashes leaves no folder at all.
    calls.clear()
    with pytest.raises(OSError):
        export_run(lora_run, ExportSection(size="1MB", verify=False), out_dir=tmp_path / "new", log=lambda *_: None)
    assert not (tmp_path / "new").exists()


def test_verification_failure_is_loud_and_leaves_no_export(lora_run, tmp_path):
    out = tmp_path / "exp"
    with pytest.raises(ExportError, match="verification failed"):
        export_run(lora_run, ExportSection(tolerance=1e-12), out_dir=out, log=lambda *_: None)
    assert not out.exists()
    report = json.loads((tmp_path / "exp.verify-failed.json").read_text())
    assert report["passed"] is False and report["max_abs_diff"] > 1e-12


def test_cli_export(lora_run, tmp_path, capsys):
    from glmtune.cli import main

    assert main(["export", "--run", str(lora_run), "--out", str(tmp_path / "cli"), "--size", "1MB",
                 "--dtype", "float16"]) == 0
    assert json.loads((tmp_path / "cli" / "verify.json").read_text())["passed"]
    # a user error (no such run) exits 2, as every verb's input errors do (glmtune/errors.py)
    assert main(["export", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "not a finished run folder" in capsys.readouterr().err


def test_unmergeable_method_stops_with_reason(run_factory, tmp_path):
    run = run_factory("ptuning", "method.name=ptuning")
    with pytest.raises(ExportError, match="cannot be merged"):
        export_run(run, ExportSection(), out_dir=tmp_path / "p", log=lambda *_: None)
    assert not (tmp_path / "p").exists()


def test_qlora_export_merges_into_the_full_precision_base(run_factory, tmp_path):
    """A QLoRA adapter is merged into the full-precision checkpoint and verified against that base + adapter;
    the gap to the 4-bit model it trained on (the base's quantisation error) is reported, not judged."""
    from transformers import AutoModelForCausalLM

    from glmtune.run.folder import Run
    from glmtune.run.load import load_full_precision_adapter

    run = run_factory("qlora", "method.name=qlora", "method.rank=4")
    lines = []
    res = export_run(run, ExportSection(size="1MB"), out_dir=tmp_path / "q", log=lines.append)
    verify = json.loads((res.out_dir / "verify.json").read_text())
    assert verify["passed"] and verify["max_abs_diff"] <= 1e-3 and verify["streamed"]
    drift = verify["vs_quantized_training_model"]
    assert drift["max_abs_diff"] > 10 * verify["max_abs_diff"]  # NF4 moves the logits: the reference matters
    assert any("4-bit model the run trained on" in line for line in lines)

    ids = torch.tensor([[3, 10, 20, 30, 40, 50]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(res.out_dir, dtype=torch.float32)(ids).logits
        reference = load_full_precision_adapter(Run.open(run))(input_ids=ids).logits
    assert float((merged - reference).abs().max()) < 1e-4
