"""Rendering parity on a template that closes its own turns (SmolLM2's ChatML).

Expected arrays are built by hand from the ChatML layout, not from the template: a prompt is masked (-100),
an answer is supervised through its `<|im_end|>` and the newline ChatML writes after it (LLaMA-Factory's
chatml/qwen format supervises the same `{{content}}<|im_end|>\\n`); no extra stop token is appended."""

import pytest

pytestmark = pytest.mark.real

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # the template's default


@pytest.fixture(scope="module")
def renderer(smollm2_dir):
    from glmtune.data.render import Renderer
    from glmtune.models.families import family_of
    from glmtune.models.load import load_tokenizer, model_type_of, stop_token_ids

    tok = load_tokenizer(smollm2_dir)
    return Renderer(tok, stop_token_ids(tok, family_of(model_type_of(smollm2_dir))))


def enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_single_turn_labels_are_answer_and_im_end(renderer):
    tok = renderer.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert renderer.stop_ids == [im_end]  # ChatML's turn end is the tokenizer's eos
    msgs = [{"role": "user", "content": "Record: name Normudak, code 1791"},
            {"role": "assistant", "content": "1791@Normudak"}]
    prompt = enc(tok, f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nRecord: name Normudak, code 1791"
                      f"<|im_end|>\n<|im_start|>assistant\n")
    answer = enc(tok, "1791@Normudak") + [im_end] + enc(tok, "\n")
    ids, labels = renderer.render(msgs)
    assert ids == prompt + answer
    assert labels == [-100] * len(prompt) + answer
    assert tok.decode([t for t in labels if t != -100]) == "1791@Normudak<|im_end|>\n"


def test_two_turns_with_system_supervise_both_answers_only(renderer):
    tok = renderer.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Japan?"}, {"role": "assistant", "content": "Tokyo."}]
    p1 = enc(tok, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n"
                  "<|im_start|>assistant\n")
    a1 = enc(tok, "Paris.") + [im_end] + enc(tok, "\n")
    p2 = enc(tok, "<|im_start|>user\nAnd of Japan?<|im_end|>\n<|im_start|>assistant\n")
    a2 = enc(tok, "Tokyo.") + [im_end] + enc(tok, "\n")
    ids, labels = renderer.render(msgs)
    assert ids == p1 + a1 + p2 + a2
    assert labels == [-100] * len(p1) + a1 + [-100] * len(p2) + a2

    renderer_last = type(renderer)(tok, renderer.stop_ids, "last_turn")
    _, last = renderer_last.render(msgs)
    assert last == [-100] * (len(p1) + len(a1) + len(p2)) + a2


def test_generation_prompt_equals_the_training_prefix(renderer):
    """Serving renders the same prefix the answer was trained after, so the model sees no drift."""
    msgs = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]
    ids, labels = renderer.render(msgs)
    prompt = renderer.prompt_ids(msgs[:1])
    assert ids[:len(prompt)] == prompt and all(x == -100 for x in labels[:len(prompt)])
    assert labels[len(prompt)] != -100
