"""The LLM client interface: its config, request, reply and failure types.

    client = OpenAIChatClient(config)      # or data_gen.llm.backends.make_client(config)
    async with client:                     # opens/closes connections (once per event loop)
      reply = await client.complete(LLMRequest(id, prompt, captions))
    # reply is Completion(text, finish_reason, attempts, …) or LLMFailure(reason, detail, attempts)

Backends:
- "openai": any OpenAI-compatible chat-completions endpoint (OpenAI, Azure
  OpenAI's v1 route, a local vLLM or TGI server): `base_url` + `model`, the
  API key read from the environment variable named by `api_key_env` (never
  from a config file, never logged). Spec sampling: one user message, no
  system prompt, temperature 1.0, top_p 1.0, max_tokens 2048. See
  openai_client.py for retries and rate limits.
- "template": NOT a language model; data_gen's offline stand-in
  (data_gen/llm/template.py), named here so one LLMConfig describes either.

Failure reasons (LLMFailure.reason, counted by batch reports):
  llm_cut_by_max_tokens   finish_reason "length": the reply hit max_tokens (not retried)
  llm_content_filter      finish_reason "content_filter" (not retried)
  llm_http_<status>       a client error such as 400/401/404 (not retried)
  llm_retries_exhausted   max_attempts transient failures (429, 5xx, timeouts,
                          dropped connections, bodies that are not the expected JSON);
                          `detail` names the last one
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol

BACKENDS = ("openai", "template")


@dataclasses.dataclass(frozen=True)
class LLMConfig:
  backend: str = "openai"
  base_url: str = "https://api.openai.com/v1"
  model: str = "gpt-4"
  # Name of the environment variable holding the key; "" for endpoints
  # without auth (a local vLLM).
  api_key_env: str = "OPENAI_API_KEY"
  temperature: float = 1.0
  top_p: float = 1.0
  max_tokens: int = 2048
  # Newer OpenAI reasoning models take "max_completion_tokens" instead.
  max_tokens_field: str = "max_tokens"
  concurrency: int = 16
  requests_per_minute: float | None = None
  tokens_per_minute: float | None = None
  rate_burst_s: float = 60.0
  # Shared limiter state for several processes on one machine (rate_limit.py).
  rate_state_file: str | None = None
  request_timeout_s: float = 180.0
  max_attempts: int = 6
  backoff_base_s: float = 1.0
  backoff_max_s: float = 60.0
  # A server's Retry-After is honoured up to this long.
  retry_after_max_s: float = 300.0

  def __post_init__(self):
    if self.backend not in BACKENDS:
      raise ValueError(f"llm backend {self.backend!r} is not one of {BACKENDS}")
    for name in ("max_tokens", "concurrency", "max_attempts"):
      if getattr(self, name) < 1:
        raise ValueError(f"llm {name} is {getattr(self, name)}; it must be at least 1")
    for name in ("request_timeout_s", "rate_burst_s"):
      if getattr(self, name) <= 0:
        raise ValueError(f"llm {name} is {getattr(self, name)}; it must be positive")

  @classmethod
  def from_mapping(cls, values: Mapping[str, Any]) -> "LLMConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown llm config keys {unknown}; known keys: {sorted(known)}")
    return cls(**values)

  def split_across(self, num_workers: int) -> "LLMConfig":
    """This worker's share when `num_workers` workers on different machines
    draw from one quota (see rate_limit.py for why a split). With a
    rate_state_file the workers already draw from one shared bucket, so only
    concurrency is split."""
    if num_workers < 1:
      raise ValueError(f"num_workers is {num_workers}; it must be at least 1")
    divisor = 1 if self.rate_state_file else num_workers
    share = lambda limit: None if limit is None else limit / divisor
    return dataclasses.replace(self, requests_per_minute=share(self.requests_per_minute),
                               tokens_per_minute=share(self.tokens_per_minute),
                               concurrency=max(1, self.concurrency // num_workers))


@dataclasses.dataclass(frozen=True)
class LLMRequest:
  id: str
  prompt: str
  # The conversation's image captions in prompt order; the template backend
  # composes from these, a real model reads them in the prompt.
  captions: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Completion:
  text: str
  finish_reason: str
  attempts: int
  prompt_tokens: int = 0
  completion_tokens: int = 0


@dataclasses.dataclass(frozen=True)
class LLMFailure:
  reason: str
  detail: str
  attempts: int


class LLMClient(Protocol):
  config: LLMConfig

  async def __aenter__(self) -> "LLMClient":
    ...

  async def __aexit__(self, *exc_info) -> None:
    ...

  async def complete(self, request: LLMRequest) -> Completion | LLMFailure:
    ...
