"""`serve --backend vllm` before vLLM starts: finding its environment, choosing what to serve, the folder
and command vLLM gets, and the LoRA conversion. (Serving through vLLM itself: tests/e2e/test_vllm_serve.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glmtune.serve.config import ServeSection
from glmtune.serve.vllm import VllmError, build_view, find_python, make_plan, prepare, split_gate_up


def fake_run(root: Path, name: str, method: str = "lora", base: str = "tiny:glm4", **adapter_cfg) -> Path:
    """A run folder as training leaves it (method.json + adapter config); planning reads nothing else."""
    run = root / name
    (run / "adapter").mkdir(parents=True)
    (run / "method.json").write_text(json.dumps({"method": method, "artifact": "adapter", "base": base}))
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, **adapter_cfg}))
    return run


@pytest.fixture
def vllm_python(tmp_path, monkeypatch):
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    (tmp_path / "venv" / ".installed").write_text("cpu\n")
    monkeypatch.setenv("GLMTUNE_VLLM_PYTHON", str(python))
    return python


def test_missing_environment_is_one_line_naming_make_vllm(tmp_path):
    env = {**os.environ, "GLMTUNE_VLLM_PYTHON": str(tmp_path / "nope" / "python")}
    p = subprocess.run([sys.executable, "-m", "glmtune", "serve", "--backend", "vllm", "--model", "tiny:glm4"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "make vllm" in lines[0] and "GLMTUNE_VLLM_PYTHON" in lines[0], p.stderr


def test_environment_found_by_config_key_with_its_build(vllm_python, monkeypatch):
    monkeypatch.delenv("GLMTUNE_VLLM_PYTHON")
    assert find_python(ServeSection(vllm_python=str(vllm_python))) == (vllm_python, "cpu")
    with pytest.raises(VllmError, match="serve.vllm_python=.*make vllm"):
        find_python(ServeSection(vllm_python=str(vllm_python) + "x"))


def test_plan_prefers_a_verified_export_else_base_plus_lora(tmp_path, tiny_glm4):
    run = fake_run(tmp_path, "demo")
    plan = make_plan(str(run), None)
    assert plan.model == tiny_glm4 and plan.loras == {"demo": run / "adapter"} and plan.name == tiny_glm4.name
    (run / "export").mkdir()
    (run / "export" / "verify.json").write_text("{}")
    plan = make_plan(str(run), None)
    assert plan.model == run / "export" and plan.name == "demo" and plan.loras == {}
    # an extra adapter goes on the base the run trained on, not on the merged export
    other = fake_run(tmp_path, "style")
    plan = make_plan(str(run), None, {"style": str(other)})
    assert plan.model == tiny_glm4 and set(plan.loras) == {"demo", "style"}


def test_what_vllm_cannot_load_names_the_route_that_works(tmp_path):
    dora = fake_run(tmp_path, "dora", use_dora=True)
    with pytest.raises(VllmError, match=r"no DoRA; export the run \(`glmtune export --run .*dora`\)"):
        make_plan(str(dora), None)
    saved = fake_run(tmp_path, "saved", modules_to_save=["lm_head"])
    with pytest.raises(VllmError, match="modules_to_save.*--backend hf"):
        make_plan(None, "tiny:glm4", {"s": str(saved)})
    ptuning = tmp_path / "pt"
    (ptuning / "prefix").mkdir(parents=True)
    (ptuning / "method.json").write_text(json.dumps({"method": "ptuning", "artifact": "prefix", "base": "tiny:glm4"}))
    with pytest.raises(VllmError, match="ptuning.*--backend hf"):
        make_plan(str(ptuning), None)
    llama = fake_run(tmp_path, "other_base", base="tiny:llama")
    with pytest.raises(VllmError, match="was trained on tiny:llama"):
        make_plan(None, "tiny:glm4", {"x": str(llama)})


def test_split_gate_up_is_the_same_delta(adapters, tmp_path):
    import torch
    from safetensors.torch import load_file

    src = Path(adapters["alpha"])
    out = split_gate_up(src, tmp_path / "split")
    fused, split = load_file(str(src / "adapter_model.safetensors")), load_file(str(out / "adapter_model.safetensors"))
    gate_up = [k for k in fused if ".gate_up_proj.lora_A." in k]
    assert gate_up and not any("gate_up_proj" in k for k in split)
    for a_key in gate_up:
        b_key = a_key.replace("lora_A", "lora_B")
        delta = fused[b_key] @ fused[a_key]
        parts = [split[b_key.replace("gate_up_proj", p)] @ split[a_key.replace("gate_up_proj", p)]
                 for p in ("gate_proj", "up_proj")]
        assert delta.abs().max() > 0 and torch.allclose(delta, torch.cat(parts), atol=1e-6)
    for k in fused:  # everything else byte for byte
        if "gate_up_proj" not in k:
            assert (fused[k] == split[k]).all()
    cfg = json.loads((out / "adapter_config.json").read_text())
    targets = cfg["target_modules"]
    assert "gate_up_proj" not in str(targets) and "gate_proj" in str(targets) and "up_proj" in str(targets)


def test_view_and_command_carry_template_stop_ids_dtype_and_limits(vllm_python, tmp_path, adapters, tiny_glm4):
    from glmtune.models.load import load_tokenizer

    cfg = ServeSection(max_prompt_tokens=8192, max_new_tokens=512, api_key="k", vllm_args=["--seed", "1"])
    cmd, env, plan = prepare(None, "tiny:glm4", cfg, {"a": adapters["alpha"]}, view_root=tmp_path / "views")
    view = Path(cmd[cmd.index("--model") + 1])
    tok = load_tokenizer(tiny_glm4)
    assert Path(cmd[cmd.index("--chat-template") + 1]).read_text() == tok.chat_template
    gen = json.loads((view / "generation_config.json").read_text())
    stops = ("<|endoftext|>", "<|user|>", "<|observation|>")
    assert gen["eos_token_id"] == [tok.convert_tokens_to_ids(t) for t in stops]
    assert (view / "model.safetensors").resolve() == (tiny_glm4 / "model.safetensors").resolve()
    arg = lambda flag: cmd[cmd.index(flag) + 1]  # noqa: E731
    assert arg("--host") == "127.0.0.1" and arg("--dtype") == "float32" and arg("--api-key") == "k"
    assert arg("--max-model-len") == "8192"  # capped by the model's max_position_embeddings, not 8192 + 512
    assert arg("--max-lora-rank") == "8"  # r=4 rounded up to a rank vLLM accepts
    assert arg("--lora-modules") == f"a={view / 'loras' / 'a'}" and "--enforce-eager" in cmd
    assert cmd[-2:] == ["--seed", "1"] and env["GLMTUNE_VLLM_LORA_ARCH"] == "Glm4ForCausalLM"
    # the view is rebuilt, not stale, when launched again
    again = prepare(None, "tiny:glm4", cfg, {"a": adapters["alpha"]}, view_root=tmp_path / "views")[0]
    assert again == cmd and plan.loras == {"a": Path(adapters["alpha"])}


def test_build_view_uses_the_run_tokenizer(tmp_path, tiny_glm4):
    import shutil

    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_glm4 / f, tok_dir / f)
    (tok_dir / "chat_template.jinja").write_text("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
                                                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    from glmtune.serve.vllm import Plan

    view, _, facts = build_view(Plan(tiny_glm4, "m", tok_dir), tmp_path / "views")
    assert (view / "chat_template.jinja").read_text().startswith("{% for m in messages %}")
    assert facts["dtype"] == "float32" and facts["max_positions"] == 8192
