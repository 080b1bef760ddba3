"""Helpers for the evaluation e2e tests: scoring data, a field spec, and a minimal OpenAI-compatible app."""

MINI_SPEC = ("name: mini\nfields:\n  - {name: 语速, type: int, allowed: [1,2,3,4,5]}\n"
             "  - {name: 停顿, type: int, allowed: [1,2,3,4,5]}\n  - {name: 评语, type: str}\n")


def write_scoring_data(path, n, seed):
    """Short scoring conversations whose answer repeats the score in the prompt: `语速:v;停顿:v;评语:好`."""
    import json
    import random

    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            v = rng.randint(1, 5)
            f.write(json.dumps({"messages": [{"role": "user", "content": f"朗读得分{v}，请评分"},
                                             {"role": "assistant", "content": f"语速:{v};停顿:{v};评语:好"}]},
                               ensure_ascii=False) + "\n")
    return path


def make_openai_app(engine, api_key: str, max_prompt_tokens: int = 256):
    """A minimal OpenAI-compatible /v1/chat/completions over an HFEngine (test only; `glmtune serve` is the
    product server). Prompts longer than max_prompt_tokens get the 400 a real server gives."""
    import time
    import uuid

    from fastapi import FastAPI, Header, HTTPException
    from fastapi.responses import JSONResponse

    app = FastAPI()
    app.state.requests = 0

    @app.post("/v1/chat/completions")
    def chat(body: dict, authorization: str | None = Header(None)):
        if authorization != f"Bearer {api_key}":
            raise HTTPException(401, "bad api key")
        app.state.requests += 1
        msgs = body["messages"]
        if len(engine.prompt_ids(msgs)) > max_prompt_tokens:
            return JSONResponse({"error": {"message": "prompt exceeds the context length", "type": "invalid_request_error"}},
                                status_code=400)
        c = engine.generate([msgs], max_new_tokens=body.get("max_tokens") or 64,
                            temperature=body.get("temperature") or 0.0, top_p=body.get("top_p") or 1.0)[0]
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:8]}", "object": "chat.completion", "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason}],
                "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                          "total_tokens": c.prompt_tokens + c.completion_tokens}}

    return app
