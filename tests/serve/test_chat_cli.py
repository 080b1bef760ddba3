"""Terminal chat: one-shot --prompt, the interactive loop and its commands, stateless mode."""

import io

from glmtune.serve.chat_cli import ChatSession, loop


def test_session_stateless_sends_each_question_alone():
    s = ChatSession(system="sys")
    s.record("q1", "a1")
    assert [m["role"] for m in s.messages_for("q2")] == ["system", "user", "assistant", "user"]
    st = ChatSession(system="sys", stateless=True)
    st.record("q1", "a1")
    assert st.messages_for("q2") == [{"role": "system", "content": "sys"}, {"role": "user", "content": "q2"}]
    assert st.history == []


def test_one_shot_prompt(tiny_glm4, capsys):
    from glmtune.cli import main

    assert main(["chat", "--model", str(tiny_glm4), "--prompt", "你好", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.strip()


def test_interactive_loop_commands(served):
    engine = served.engine
    session = ChatSession()
    inp = io.StringIO("你好\n/history\n今天呢\n/clear\n/history\n/bogus\n/exit\n")
    out = io.StringIO()
    assert loop(engine, session, 5, 0.0, inp, out) == 0
    text = out.getvalue()
    assert "[user] 你好" in text and "history cleared" in text and "(no history)" in text
    assert "unknown command /bogus" in text and session.history == []
    assert text.count("model> ") == 2


def test_stateless_answers_do_not_depend_on_earlier_questions(served):
    from glmtune.serve.chat_cli import answer

    engine = served.engine
    alone = answer(engine, ChatSession(stateless=True), "俗话说", 8)
    s = ChatSession(stateless=True)
    answer(engine, s, "完全不同的第一个问题", 8)
    assert answer(engine, s, "俗话说", 8) == alone
