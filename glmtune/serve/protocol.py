"""OpenAI chat-completions wire types (the subset glmtune serves), validated at the boundary.

Unknown fields, wrong types (strict: `"8"` is not an integer), unknown roles and OpenAI parameters
the engine does not implement (logprobs, penalties, logit_bias, tools...) are rejected with HTTP 400 in
OpenAI's error shape naming the field, as OpenAI's server does for arguments it does not recognise
(vLLM returns a typed ErrorResponse the same way); nothing a client asks for is silently ignored.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ROLES = ("system", "user", "assistant", "observation")


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: str
    content: str | list[dict] | None = ""

    @field_validator("role")
    @classmethod
    def _known_role(cls, v: str) -> str:
        if v == "tool":  # OpenAI's name for a tool result; GLM's template calls it observation
            return "observation"
        if v not in ROLES:
            raise ValueError(f"unknown role {v!r}; expected one of {', '.join(ROLES)} (or tool)")
        return v

    @field_validator("content")
    @classmethod
    def _text(cls, v) -> str:
        if v is None:
            return ""
        if isinstance(v, list):  # [{"type": "text", "text": ...}, ...]
            if any(p.get("type") != "text" for p in v):
                raise ValueError("only text content parts are supported")
            return "".join(str(p.get("text", "")) for p in v)
        return v


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False
    include_obfuscation: bool | None = None  # OpenAI pads chunks against side channels; nothing to pad here


# OpenAI parameters glmtune's engine does not implement: accepted only with a value that changes nothing
# (absent, null, or the neutral value below), otherwise HTTP 400 naming the field. Silently ignoring them
# would answer something other than what the client asked for, with status 200.
_NEUTRAL = {
    "logprobs": (False,), "top_logprobs": (0,), "frequency_penalty": (0,), "presence_penalty": (0,),
    "logit_bias": ({},), "response_format": ({"type": "text"},), "tools": ([],), "tool_choice": ("none", "auto"),
    "functions": ([],), "function_call": ("none", "auto"), "parallel_tool_calls": (True, False),
    "modalities": (["text"],), "prediction": (), "audio": (), "web_search_options": (), "reasoning_effort": (),
}


class ChatCompletionRequest(BaseModel):
    """Strict types (`max_tokens: "8"` is an error, not 8) and no unknown fields, as OpenAI's own server."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str = "default"
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(1.0, ge=0, le=2)
    top_p: float | None = Field(1.0, gt=0, le=1)
    n: int | None = Field(1, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    min_tokens: int = Field(0, ge=0)  # vLLM extension: no stop token before this many tokens
    # vLLM extension: the prompt's ids (`prompt_token_ids`) and each choice's generated ids (`token_ids`, the stop
    # token included), so engines can be compared token for token where their texts legitimately differ
    return_token_ids: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    response_format: dict | None = None
    tools: list | None = None
    tool_choice: str | dict | None = None
    functions: list | None = None
    function_call: str | dict | None = None
    parallel_tool_calls: bool | None = None
    modalities: list[str] | None = None
    prediction: dict | None = None
    audio: dict | None = None
    web_search_options: dict | None = None
    reasoning_effort: str | None = None
    # These only label or route a request on OpenAI's side: accepted, nothing to act on.
    user: str | None = None
    store: bool | None = None
    metadata: dict | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None

    @field_validator(*_NEUTRAL)
    @classmethod
    def _not_implemented(cls, v, info):
        if v is None or v in _NEUTRAL[info.field_name]:
            return None
        allowed = ["absent", "null"] + [json.dumps(x) for x in _NEUTRAL[info.field_name]]
        raise ValueError(f"not supported by glmtune's server (allowed: {', '.join(allowed)})")

    @field_validator("temperature", "top_p", "stream", "n")
    @classmethod
    def _null_is_default(cls, v, info):
        return cls.model_fields[info.field_name].default if v is None else v

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def new_tokens(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(cid: str, model: str, choices: list[tuple[str, str]], prompt: int, completion: int,
                    prompt_ids: list[int] | None = None, choice_ids: list[list[int]] | None = None) -> dict:
    """`choices`: (text, finish_reason) per choice; `completion`: tokens of all choices (OpenAI's usage).
    With `return_token_ids`: `prompt_ids` and each choice's generated ids (vLLM's `prompt_token_ids` and
    `token_ids`)."""
    body = {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                        for i, (text, finish) in enumerate(choices)],
            "usage": usage(prompt, completion)}
    if prompt_ids is not None:
        body["prompt_token_ids"] = prompt_ids
    for choice, ids in zip(body["choices"], choice_ids or []):
        choice["token_ids"] = ids
    return body


def chunk_body(cid: str, model: str, delta: dict | None, finish: str | None = None, use: dict | None = None,
               index: int = 0, token_ids: list[int] | None = None, prompt_ids: list[int] | None = None) -> dict:
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}] if delta is not None else []}
    if token_ids is not None and body["choices"]:
        body["choices"][0]["token_ids"] = token_ids
    if prompt_ids is not None:
        body["prompt_token_ids"] = prompt_ids
    if use is not None:
        body["usage"] = use
    return body


def error_body(message: str, type_: Literal["invalid_request_error", "authentication_error", "rate_limit_error",
                                            "server_error", "not_found_error"], param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
