"""The bounded-memory paths of GGUF, bitsandbytes and convert give what the whole-model paths give.

  * stream_forward.StreamedModel (the float32 reference of the GGUF and bnb checks): logits and greedy tokens
    equal a whole `from_pretrained` model's (summation-order noise only);
  * bnb.quantize_streamed: the same files as `from_pretrained(quantization_config=...)` + `save_pretrained`,
    tensor for tensor, bit for bit, and the same config.json; the bnb check's quantised side, streamed, gives
    the logits of a plain `from_pretrained(OUT)`;
  * convert reading with pread: the same tensors as the memory-mapped read it replaced.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from glmtune.export.stream_forward import StreamedModel
from glmtune.models.tiny import ensure_tiny

IDS = [[5, 17, 3, 99, 42, 7, 7], [11, 2], [300, 301, 302, 5, 6, 7, 8, 9, 10, 11, 12]]


def _whole(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


@pytest.mark.parametrize("family", ["glm4", "glm", "llama"])
def test_streamed_logits_and_greedy_equal_the_whole_model(family):
    folder = ensure_tiny(family)
    sm = StreamedModel(folder)
    got = sm.logits(IDS)
    model = _whole(folder)
    with torch.inference_mode():
        want = [model(input_ids=torch.tensor([p])).logits[0] for p in IDS]
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert float((g - w).abs().max()) < 1e-4 * max(1.0, float(w.abs().max()))
    greedy, steps = sm.greedy(IDS, stop_ids=[0], max_new=6)
    for p, new, st in zip(IDS, greedy, steps):
        seq = list(p)
        with torch.inference_mode():
            for tok, logits in zip(new, st):
                last = model(input_ids=torch.tensor([seq])).logits[0, -1]
                assert int(last.argmax()) == tok
                assert float((torch.from_numpy(logits) - last).abs().max()) < 1e-4 * max(1.0, float(last.abs().max()))
                seq.append(tok)
        assert len(new) == 6 or new[-1] == 0


def test_streamed_model_refuses_remote_code(tmp_path):
    from glmtune.export.verify import CannotStream

    folder = tmp_path / "rc"
    folder.mkdir()
    cfg = json.loads((ensure_tiny("glm4") / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.X"}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CannotStream, match="remote-code"):
        StreamedModel(folder)


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["bnb4", "bnb8"])
def test_streamed_bnb_quantization_equals_from_pretrained_save_pretrained(quant, tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    from glmtune.export.bnb import _bnb_config, quantize_streamed

    src = ensure_tiny("glm4")
    ref_dir, got_dir = tmp_path / "ref", tmp_path / "got"
    model = AutoModelForCausalLM.from_pretrained(str(src), quantization_config=_bnb_config(quant),
                                                 dtype=torch.float32, device_map="cpu")
    model.save_pretrained(str(ref_dir), safe_serialization=True)
    del model
    got_dir.mkdir()
    info = quantize_streamed(src, got_dir, quant, max_shard="1MB")  # several shards: modules split across files
    assert info["quantized_linears"] > 0
    ref = load_file(str(next(ref_dir.glob("*.safetensors"))))
    got = {}
    for f in sorted(got_dir.glob("*.safetensors")):
        got.update(load_file(str(f)))
    assert len(list(got_dir.glob("*.safetensors"))) > 1
    assert sorted(got) == sorted(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
        assert torch.equal(got[k], ref[k]), k
    cref = json.loads((ref_dir / "config.json").read_text())
    cgot = json.loads((got_dir / "config.json").read_text())
    assert cgot["quantization_config"] == cref["quantization_config"]
    assert {k: v for k, v in cgot.items() if k != "transformers_version"} == \
        {k: v for k, v in cref.items() if k != "transformers_version"}
    loaded = AutoModelForCausalLM.from_pretrained(str(got_dir), device_map="cpu")
    assert getattr(loaded, f"is_loaded_in_{quant[-1]}bit")
    # The bnb check's quantised side, streamed one layer at a time, computes what the plain load computes.
    from glmtune.export.bnb import _logits_and_greedy, _quantized_side
    from glmtune.methods.qlora import keep_standard_4bit_layout

    if quant == "bnb4":
        keep_standard_4bit_layout(loaded)
    want, want_greedy = _logits_and_greedy(loaded.eval(), IDS, [0], 5)
    got_logits, got_greedy, is_quantized, how = _quantized_side(got_dir, IDS, [0], 5, quant)
    assert how.startswith("streamed") and is_quantized and got_greedy == want_greedy
    assert all(float((a - b).abs().max()) < 1e-5 * max(1.0, float(b.abs().max())) for a, b in zip(got_logits, want))


def test_convert_reads_the_same_tensors_with_pread_as_with_a_map(tmp_path):
    from safetensors import safe_open

    from glmtune.models.convert import iter_tensors

    src = ensure_tiny("glm4")
    files = sorted(src.glob("*.safetensors"))
    got = dict(iter_tensors(files))
    want = {}
    for f in files:
        with safe_open(str(f), "pt") as h:  # the memory-mapped read
            want.update({k: h.get_tensor(k) for k in h.keys()})
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_gguf_and_bnb_references_streamed_equal_the_whole_model_ones():
    """The float32 side of both checks: streamed figures = the whole-model code path's (kept as the fallback)."""
    import numpy as np

    from glmtune.export import bnb, gguf_verify
    from glmtune.export.verify import VERIFY_PROMPTS

    folder = ensure_tiny("glm4")
    stops = [0]
    ref = gguf_verify._hf_reference(folder, VERIFY_PROMPTS, stops, 6)
    assert ref["how"].startswith("streamed")
    logits, greedy, steps = gguf_verify._whole_model_reference(folder, ref["ids"], stops, 6)
    assert ref["greedy"] == greedy
    for a, b in zip(ref["logits"], logits):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-4 * max(1.0, np.abs(b).max())
    for sa, sb in zip(ref["step_logits"], steps):
        assert len(sa) == len(sb) and all(np.abs(x - y).max() < 1e-3 for x, y in zip(sa, sb))
    got, got_greedy, how = bnb._reference(folder, ref["ids"], stops, 6)
    want, want_greedy = bnb._logits_and_greedy(_whole(folder), ref["ids"], stops, 6)
    assert how.startswith("streamed") and got_greedy == want_greedy
    assert all(float((a - b).abs().max()) < 1e-4 * max(1.0, float(b.abs().max())) for a, b in zip(got, want))
