"""Ollama `Modelfile` next to each GGUF: the run's chat template in Ollama's Go-template syntax, the stop
parameters and (optionally) a system prompt.

A Jinja chat template cannot be translated to Go templates in general, so the template is *measured*:
the HF template renders conversations with sentinel contents, which splits it into a fixed prefix, a
before/after text around each role's content, and the generation prompt. These pieces are written as one
`range .Messages` loop (Ollama's own way of writing chat templates). The result is then rendered by
`render_go_template` (a renderer of exactly the Go-template subset emitted here: no Go toolchain or Ollama
is needed at export time) on several conversations and compared with the HF rendering; if any differs
(a template that is not "role prefix + content + role suffix", e.g. one that injects a default system
prompt or tool schemas) no Modelfile is written and the export says why. GLM-4's role for a tool result
is `observation`; Ollama calls it `tool`.
"""

from __future__ import annotations

import re
from pathlib import Path

_S = {"user": "\u24e41\u24e4", "user2": "\u24e42\u24e4", "assistant": "\u24d01\u24d0", "system": "\u24e21\u24e2",
      "tool": "\u24e31\u24e3"}
OLLAMA_ROLES = ("system", "user", "assistant", "tool")


class TemplateNotExpressible(ValueError):
    pass


def _render(tok, messages, gen=False) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def _split(seg: str, sentinel: str, what: str) -> tuple[str, str]:
    if seg.count(sentinel) != 1:
        raise TemplateNotExpressible(f"the {what} turn does not render its content exactly once")
    a, b = seg.split(sentinel)
    return a, b


def _tool_role(tok, base: list[dict]) -> str | None:
    for role in ("observation", "tool"):
        try:
            _render(tok, base + [{"role": role, "content": _S["tool"]}])
            return role
        except Exception:  # the template raises on a role it does not know
            continue
    return None


def measure_template(tok) -> dict:
    """Split the HF chat template into prefix, per-role (before, after) and generation prompt."""
    u1 = [{"role": "user", "content": _S["user"]}]
    ua = u1 + [{"role": "assistant", "content": _S["assistant"]}]
    uau = ua + [{"role": "user", "content": _S["user2"]}]
    r_u, r_ug, r_ua, r_uau = _render(tok, u1), _render(tok, u1, True), _render(tok, ua), _render(tok, uau)
    if not (r_ug.startswith(r_u) and r_ua.startswith(r_u) and r_uau.startswith(r_ua)):
        raise TemplateNotExpressible("rendering a conversation's first turns does not give a prefix of the whole")
    gen = r_ug[len(r_u):]
    roles = {"user": _split(r_uau[len(r_ua):], _S["user2"], "user")}
    roles["assistant"] = _split(r_ua[len(r_u):], _S["assistant"], "assistant")
    user_seg = roles["user"][0] + _S["user"] + roles["user"][1]
    if not r_u.endswith(user_seg):
        raise TemplateNotExpressible("the first user turn renders differently from later ones")
    prefix = r_u[: len(r_u) - len(user_seg)]
    try:
        r_su = _render(tok, [{"role": "system", "content": _S["system"]}] + u1)
    except Exception as err:
        raise TemplateNotExpressible(f"the template rejects a system message: {err}") from err
    if not (r_su.startswith(prefix) and r_su.endswith(user_seg)):
        raise TemplateNotExpressible("a system message changes more than its own turn (e.g. a default system prompt)")
    roles["system"] = _split(r_su[len(prefix): len(r_su) - len(user_seg)], _S["system"], "system")
    tool_role = _tool_role(tok, ua)
    if tool_role:
        r_t = _render(tok, ua + [{"role": tool_role, "content": _S["tool"]}])
        if not r_t.startswith(r_ua):
            raise TemplateNotExpressible(f"a {tool_role} message changes the turns before it")
        roles["tool"] = _split(r_t[len(r_ua):], _S["tool"], tool_role)
    # Templates that drop a message with empty content (GLM-4's `{% if item['content'] %}`) get `if .Content`.
    skips_empty = _render(tok, ua + [{"role": "user", "content": ""}]) == r_ua
    return {"prefix": prefix, "roles": roles, "generation_prompt": gen, "tool_role": tool_role,
            "skips_empty": skips_empty}


def go_template(m: dict) -> str:
    for text in [m["prefix"], m["generation_prompt"], *(x for pair in m["roles"].values() for x in pair)]:
        if "{{" in text or "}}" in text or '"""' in text:
            raise TemplateNotExpressible("the template's literal text contains '{{', '}}' or '\"\"\"'")
    branches = []
    for i, role in enumerate(r for r in OLLAMA_ROLES if r in m["roles"]):
        before, after = m["roles"][role]
        branches.append(f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}{before}{{{{ .Content }}}}{after}')
    body = "".join(branches) + "{{ end }}"
    if m.get("skips_empty"):
        body = "{{ if .Content }}" + body + "{{ end }}"
    return m["prefix"] + "{{ range .Messages }}" + body + "{{ end }}" + m["generation_prompt"]


# --- a renderer for the Go-template subset above (literal text, {{ .Content }}, {{ .Role }},
# {{ range .Messages }}, {{ if .Content }}, {{ if/else if eq .Role "x" }} / {{ else }} / {{ end }},
# `{{-`/`-}}` trimming) ---
_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def _parse(src: str):
    tokens, pos = [], 0
    for m in _ACTION.finditer(src):
        text = src[pos:m.start()]
        if m.group(1) == "-":
            text = text.rstrip()
        if tokens and tokens[-1][0] == "trim_next":
            tokens.pop()
            text = text.lstrip()
        tokens.append(("text", text))
        tokens.append(("action", m.group(2)))
        if m.group(3) == "-":
            tokens.append(("trim_next", ""))
        pos = m.end()
    tail = src[pos:]
    if tokens and tokens[-1][0] == "trim_next":
        tokens.pop()
        tail = tail.lstrip()
    tokens.append(("text", tail))

    def block(i, stop):
        nodes = []
        while i < len(tokens):
            kind, val = tokens[i]
            if kind == "text":
                nodes.append(("text", val))
                i += 1
                continue
            word = val.split()[0] if val else ""
            if word in stop:
                return nodes, i
            if word == "range":
                if val != "range .Messages":
                    raise ValueError(f"unsupported range: {val!r}")
                body, i = block(i + 1, {"end"})
                nodes.append(("range", body))
                i += 1
            elif word == "if":
                branches, i = [], i
                cond = val[3:].strip()
                while True:
                    body, i = block(i + 1, {"else", "end"})
                    branches.append((cond, body))
                    kind2, val2 = tokens[i]
                    if val2 == "end":
                        break
                    cond = val2[len("else"):].strip()
                    cond = cond[3:].strip() if cond.startswith("if ") else None
                nodes.append(("if", branches))
                i += 1
            elif val in (".Content", ".Role"):
                nodes.append(("field", val[1:]))
                i += 1
            else:
                raise ValueError(f"unsupported action: {{{{ {val} }}}}")
        return nodes, i

    nodes, _ = block(0, set())
    return nodes


def _cond(expr: str | None, msg: dict) -> bool:
    if expr is None:
        return True
    if expr == ".Content":  # Go: a non-empty string is true
        return bool(msg and msg["content"])
    m = re.fullmatch(r'eq \.Role "([^"]*)"', expr)
    if not m:
        raise ValueError(f"unsupported condition: {expr!r}")
    return msg is not None and msg["role"] == m.group(1)


def _exec(nodes, messages, msg, out):
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "field":
            out.append({"Content": msg["content"], "Role": msg["role"]}[node[1]])
        elif node[0] == "range":
            for m in messages:
                _exec(node[1], messages, m, out)
        elif node[0] == "if":
            for cond, body in node[1]:
                if _cond(cond, msg):
                    _exec(body, messages, msg, out)
                    break


def render_go_template(template: str, messages: list[dict]) -> str:
    """Render `template` (the subset above) the way Ollama does for a chat request: `.Messages` holds
    every message (the Modelfile's SYSTEM first when the request has none), roles as Ollama names them."""
    out: list[str] = []
    _exec(_parse(template), messages, None, out)
    return "".join(out)


def to_ollama_messages(messages: list[dict], tool_role: str | None) -> list[dict]:
    return [{"role": "tool" if m["role"] == tool_role else m["role"], "content": m["content"]} for m in messages]


PARITY_CONVERSATIONS: list[list[dict]] = [
    [{"role": "user", "content": "你好"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "语速:2;停顿:3"}],
]


def check_parity(tok, template: str, tool_role: str | None) -> list[dict]:
    """Render each conversation through the Go template and the HF template; ids must be equal."""
    from glmtune.data.render import chat_ids

    convs = [*PARITY_CONVERSATIONS]
    if tool_role:
        convs.append([{"role": "user", "content": "weather?"}, {"role": "assistant", "content": "get_weather()"},
                      {"role": tool_role, "content": "{\"t\": 21}"}])
    results = []
    for conv in convs:
        go = render_go_template(template, to_ollama_messages(conv, tool_role))
        hf_ids = chat_ids(tok, conv, add_generation_prompt=True)
        go_ids = tok(go, add_special_tokens=False)["input_ids"]
        results.append({"messages": len(conv), "ids_equal": go_ids == hf_ids, "tokens": len(hf_ids)})
    return results


def modelfile_text(gguf_name: str, template: str, stop_tokens: list[str], system: str | None) -> str:
    lines = [f"# Ollama Modelfile written by glmtune export. Use: ollama create NAME -f {{this file}}",
             f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    if system:
        if '"""' in system:
            from glmtune.errors import InputError

            raise InputError('the system prompt contains \'"""\', which a Modelfile cannot quote')
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{t}"' for t in stop_tokens]
    return "\n".join(lines) + "\n"


def write_modelfiles(folder: Path, hf_dir: Path, files: dict[str, Path], stop_ids: list[int],
                     system: str | None = None, log=print) -> dict:
    """`Modelfile` (first GGUF) and `Modelfile.<quant>` (the others); returns what was written or why not."""
    from glmtune.models.load import load_tokenizer

    tok = load_tokenizer(hf_dir)
    try:
        measured = measure_template(tok)
        template = go_template(measured)
        parity = check_parity(tok, template, measured["tool_role"])
        if not all(p["ids_equal"] for p in parity):
            raise TemplateNotExpressible(f"the Go template renders differently from the chat template: {parity}")
    except TemplateNotExpressible as err:
        log(f"export: no Ollama Modelfile: {err}. The GGUF files carry the chat template; write TEMPLATE by hand.")
        return {"written": [], "reason": str(err)}
    stops = tok.convert_ids_to_tokens(stop_ids)
    written = []
    for i, (q, path) in enumerate(files.items()):
        name = "Modelfile" if i == 0 else f"Modelfile.{q}"
        (folder / name).write_text(modelfile_text(path.name, template, stops, system), encoding="utf-8")
        written.append(name)
    return {"written": written, "template": template, "parity": parity, "stop": stops,
            "tool_role": measured["tool_role"]}
