"""`serve:` section — bind address, limits, batching, auth."""

from pydantic import Field

from glmtune.config.base import Section


class ServeSection(Section):
    host: str = Field("127.0.0.1", description="Bind address (127.0.0.1 unless you mean to expose it).")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    api_key: str | None = Field(None, description="If set, requests need 'Authorization: Bearer <key>'.")
    max_batch_size: int = Field(16, ge=1, description="Requests decoded together by the batching engine.")
    max_queue: int = Field(64, ge=1, description="Waiting requests beyond this get HTTP 429.")
    max_concurrent_requests: int | None = Field(
        None, ge=1, description="HTTP requests handled at once (waiting, generating or streaming); more get a JSON "
        "503 with Retry-After. Default: max_queue + max_batch_size + 16.")
    max_new_tokens: int = Field(512, ge=1, description="Upper bound on max_tokens per request.")
    max_prompt_tokens: int = Field(8192, ge=1, description="Longer prompts get HTTP 400.")
    prefix_cache_tokens: int = Field(32768, ge=0, description="KV of prompt prefixes up to the last message boundary "
                                     "(system prompt, earlier turns) kept for reuse, in tokens; 0 turns it off.")
    request_timeout_s: float = Field(120.0, gt=0, description="Requests running longer are cut (finish_reason=timeout).")
    adapters: dict[str, str] = Field(default_factory=dict, description="Named LoRA adapters: {name: run or adapter folder}.")
    cors_origins: list[str] = Field(default_factory=list, description="Allowed CORS origins (none by default).")
    vllm_python: str | None = Field(None, description="--backend vllm: python of vLLM's environment "
                                    "(default: .venv-vllm next to the project, made by `make vllm`; "
                                    "$GLMTUNE_VLLM_PYTHON wins).")
    vllm_args: list[str] = Field(default_factory=list, description="--backend vllm: extra arguments for vLLM's "
                                 "server, e.g. ['--kv-cache-memory-bytes', '2G'].")
