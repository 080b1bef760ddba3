"""OpenAI chat-completions wire types (the subset glmtune serves), validated at the boundary.

Unknown fields are ignored as OpenAI's server does; wrong types, unknown roles, n != 1 and the like
are rejected with HTTP 400 in OpenAI's error shape (vLLM returns a typed ErrorResponse the same way).
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ROLES = ("system", "user", "assistant", "observation")


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
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
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = "default"
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    min_tokens: int = Field(0, ge=0)  # vLLM extension: no stop token before this many tokens

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only n=1 is supported")
        return v

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def new_tokens(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(cid: str, model: str, text: str, finish: str, prompt: int, completion: int) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": usage(prompt, completion)}


def chunk_body(cid: str, model: str, delta: dict, finish: str | None = None, use: dict | None = None) -> dict:
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if delta is not None else []}
    if use is not None:
        body["usage"] = use
    return body


def error_body(message: str, type_: Literal["invalid_request_error", "authentication_error", "rate_limit_error",
                                            "server_error", "not_found_error"], param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
