"""The OpenAI-compatible chat-completions client (backend "openai").

Each `complete` call ends in exactly one Completion or LLMFailure:
- Transient failures are retried with exponential backoff and jitter
  (delay = U(0.5, 1) · min(backoff_max_s, backoff_base_s · 2^(attempt−1))):
  HTTP 429, 408 and 5xx, timeouts, dropped connections, bodies that are cut
  or are not the expected JSON. A server's `retry-after-ms` / `Retry-After`
  (seconds or an HTTP date) replaces the backoff, up to retry_after_max_s.
  After max_attempts the request fails with llm_retries_exhausted.
- finish_reason "length" (cut by max_tokens) and "content_filter" fail at
  once: asking again at temperature 1 costs as much and is cut again as often.
- Other 4xx (bad request, bad key, unknown model) fail at once.

`concurrency` bounds requests in flight (a request waiting for its backoff
does not hold a slot); the RateLimiter bounds requests and tokens per minute.

The API key is read once from the environment, sent only in the
Authorization header, and scrubbed from every failure detail and log line
(a server that echoes it in an error body does not leak it into reports).
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import time
import urllib.parse

import aiohttp

from mim_jax.llm.client import Completion, LLMConfig, LLMFailure, LLMRequest
from mim_jax.llm.rate_limit import RateLimiter

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # English text; only for reserving rate-limit tokens before the reply says
DETAIL_CHARS = 300


class _Retryable(Exception):
  def __init__(self, detail: str, retry_after_s: float | None = None):
    super().__init__(detail)
    self.retry_after_s = retry_after_s


class _Final(Exception):
  def __init__(self, reason: str, detail: str):
    super().__init__(detail)
    self.reason = reason


class OpenAIChatClient:

  def __init__(self, config: LLMConfig):
    self.config = config
    self._key = ""
    if config.api_key_env:
      self._key = os.environ.get(config.api_key_env, "")
      if not self._key:
        raise ValueError(f"environment variable {config.api_key_env} is empty or unset; export the API key there, "
                         f"or set llm.api_key_env='' for an endpoint without authentication")
    if not _is_http_url(config.base_url):
      raise ValueError(f"llm base_url {config.base_url!r} is not an http(s) URL; give the API root, e.g. "
                       f"https://api.openai.com/v1 or http://localhost:8000/v1 for a local vLLM")
    self.url = config.base_url.rstrip("/") + "/chat/completions"
    self.limiter = RateLimiter(config.requests_per_minute, config.tokens_per_minute, burst_s=config.rate_burst_s,
                               state_file=config.rate_state_file)
    if self.limiter.token_capacity is not None and config.max_tokens > self.limiter.token_capacity:
      raise ValueError(f"max_tokens={config.max_tokens} exceeds the {self.limiter.token_capacity:.0f} tokens the "
                       f"tokens/minute bucket holds; raise tokens_per_minute or rate_burst_s, or lower max_tokens")
    self._rng = random.Random()  # unseeded: workers retrying in lockstep is what jitter avoids
    self._session: aiohttp.ClientSession | None = None
    self._slots: asyncio.Semaphore | None = None

  def __repr__(self) -> str:
    return f"OpenAIChatClient(url={self.url!r}, model={self.config.model!r})"

  async def __aenter__(self) -> "OpenAIChatClient":
    headers = {"Content-Type": "application/json"}
    if self._key:
      headers["Authorization"] = f"Bearer {self._key}"
    # One connection per slot, kept alive: the connector's default pool (100)
    # would cap concurrency below what the config asks for.
    connector = aiohttp.TCPConnector(limit=self.config.concurrency)
    self._session = aiohttp.ClientSession(headers=headers, connector=connector,
                                          timeout=aiohttp.ClientTimeout(total=self.config.request_timeout_s))
    self._slots = asyncio.Semaphore(self.config.concurrency)
    return self

  async def __aexit__(self, *exc_info) -> None:
    await self._session.close()
    self._session = self._slots = None

  async def complete(self, request: LLMRequest) -> Completion | LLMFailure:
    if self._session is None:
      raise RuntimeError("use the client inside `async with client:`, which opens its connections")
    config = self.config
    body = {"model": config.model, "messages": [{"role": "user", "content": request.prompt}],
            "temperature": config.temperature, "top_p": config.top_p, config.max_tokens_field: config.max_tokens}
    reserved = len(request.prompt) / CHARS_PER_TOKEN + config.max_tokens
    if self.limiter.token_capacity is not None:
      # A prompt too long for the bucket waits for a full bucket instead of failing.
      reserved = min(reserved, self.limiter.token_capacity)
    for attempt in range(1, config.max_attempts + 1):
      await self.limiter.acquire(reserved)
      try:
        async with self._slots:
          completion = await self._post(body, attempt)
      except _Final as failure:
        return LLMFailure(failure.reason, self._scrub(str(failure)), attempt)
      except _Retryable as failure:
        detail = self._scrub(str(failure))
        if attempt == config.max_attempts:
          return LLMFailure("llm_retries_exhausted", f"{attempt} attempts; last: {detail}", attempt)
        delay_s = self._delay_s(attempt, failure.retry_after_s)
        log.info("request %s attempt %d failed (%s); retrying in %.2f s", request.id, attempt, detail, delay_s)
        await asyncio.sleep(delay_s)
        continue
      used = completion.prompt_tokens + completion.completion_tokens
      if used:
        self.limiter.refund(reserved - used)
      return completion
    raise AssertionError("unreachable: the last attempt returns")

  async def _post(self, body: dict, attempt: int) -> Completion:
    try:
      async with self._session.post(self.url, json=body) as response:
        payload = await response.read()
        status, headers = response.status, response.headers
    except asyncio.TimeoutError:
      raise _Retryable(f"no complete reply within {self.config.request_timeout_s:g} s") from None
    except aiohttp.ClientError as error:
      raise _Retryable(f"connection: {type(error).__name__}: {error}") from None
    if status != 200:
      snippet = payload[:DETAIL_CHARS].decode("utf-8", "replace")
      if status in (408, 429) or status >= 500:
        raise _Retryable(f"HTTP {status}: {snippet}", _retry_after_s(headers))
      raise _Final(f"llm_http_{status}", f"HTTP {status}: {snippet}")
    try:
      reply = json.loads(payload)
      choice = reply["choices"][0]
      text = choice["message"]["content"]
      finish_reason = choice.get("finish_reason") or ""
      usage = reply.get("usage") or {}
      tokens = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
      raise _Retryable(f"reply is not chat-completions JSON ({type(error).__name__}: {error}): "
                       f"{payload[:80].decode('utf-8', 'replace')!r}") from None
    if finish_reason == "length":
      raise _Final("llm_cut_by_max_tokens", f"reply reached max_tokens={self.config.max_tokens} before it ended")
    if finish_reason == "content_filter":
      raise _Final("llm_content_filter", "the endpoint's content filter stopped the reply")
    if not isinstance(text, str) or not text.strip():
      raise _Retryable("reply has no text")
    return Completion(text, finish_reason, attempt, *tokens)

  def _delay_s(self, attempt: int, retry_after_s: float | None) -> float:
    if retry_after_s is not None:
      return min(retry_after_s, self.config.retry_after_max_s)
    ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (attempt - 1))
    return ceiling * self._rng.uniform(0.5, 1.0)

  def _scrub(self, text: str) -> str:
    return text.replace(self._key, "[api key]") if self._key else text


def _is_http_url(url: str) -> bool:
  try:
    parts = urllib.parse.urlsplit(url)
    _ = parts.port  # raises on a port out of range
  except ValueError:
    return False
  return parts.scheme in ("http", "https") and bool(parts.hostname)


def _retry_after_s(headers) -> float | None:
  """`retry-after-ms` (OpenAI, Azure) or `Retry-After` in seconds or as an HTTP date."""
  try:
    if "retry-after-ms" in headers:
      return max(0.0, float(headers["retry-after-ms"]) / 1000)
    value = headers.get("Retry-After")
    if value is None:
      return None
    if value.strip().replace(".", "", 1).isdigit():
      return float(value)
    return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
  except (ValueError, TypeError):  # an unparseable header: fall back to our own backoff
    return None
