"""Requests/minute and tokens/minute limits as two token buckets.

Sharing one quota among workers:
- Workers on ONE machine (several processes, e.g. Beam's DirectRunner with
  direct_running_mode="multi_processing"): give each the same `state_file`. The
  bucket levels live in that file and every take is a read-modify-write under
  an exclusive `flock`, so the processes draw from one quota exactly.
- Workers on MANY machines (Dataflow, Flink, Spark): no file is shared, and a
  coordination service would be a new moving part for a limit the server
  enforces anyway (429 + Retry-After, which the client honours). Split the
  quota instead: `LLMConfig.split_across(num_workers)` gives each worker
  1/num_workers of requests/minute, tokens/minute and concurrency. That never
  exceeds the quota; it wastes the share of idle workers, which is small when
  the work is spread evenly, as a Beam reshuffle does.

The token cost of a request is unknown until the reply, so `acquire`
reserves an estimate (prompt chars / 4 + max_tokens, the most the reply can
use) and `refund` returns what the reply's usage shows was not spent.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import os
import time


@dataclasses.dataclass
class _Levels:
  requests: float
  tokens: float
  stamp: float


class RateLimiter:
  """`requests_per_minute` / `tokens_per_minute` None = no limit. A bucket
  holds `burst_s` seconds of its rate and starts full."""

  def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None, *,
               burst_s: float = 60.0, state_file: str | os.PathLike | None = None):
    for name, value in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
      if value is not None and value <= 0:
        raise ValueError(f"{name} is {value}; give a positive limit, or None for no limit")
    if burst_s <= 0:
      raise ValueError(f"burst_s is {burst_s}; a bucket must hold a positive number of seconds of its rate")
    self.request_rate = requests_per_minute / 60 if requests_per_minute else None
    self.token_rate = tokens_per_minute / 60 if tokens_per_minute else None
    self.request_capacity = max(1.0, self.request_rate * burst_s) if self.request_rate else None
    self.token_capacity = self.token_rate * burst_s if self.token_rate else None
    self.state_file = os.fspath(state_file) if state_file is not None else None
    # Wall time, not monotonic: with a state file, other processes read the stamp.
    self._clock = time.time
    self._levels = self._full()

  def _full(self) -> _Levels:
    return _Levels(self.request_capacity or 0.0, self.token_capacity or 0.0, self._clock())

  @property
  def unlimited(self) -> bool:
    return self.request_rate is None and self.token_rate is None

  async def acquire(self, tokens: float) -> None:
    """Waits until one request costing `tokens` fits both buckets, then takes it."""
    if self.unlimited:
      return
    if self.token_capacity is not None and tokens > self.token_capacity:
      raise ValueError(f"one request reserves {tokens:.0f} tokens but the tokens/minute bucket holds "
                       f"{self.token_capacity:.0f}; raise tokens_per_minute or burst_s, or lower max_tokens")
    while True:
      wait_s = self._take(tokens)
      if wait_s <= 0:
        return
      await asyncio.sleep(wait_s)

  def refund(self, tokens: float) -> None:
    if self.token_rate is None or tokens <= 0:
      return
    with self._locked_levels() as levels:
      levels.tokens = min(self.token_capacity, levels.tokens + tokens)

  def _take(self, tokens: float) -> float:
    """Takes one request and `tokens` if both fit now (returns 0), otherwise
    takes nothing and returns how long until they would fit."""
    with self._locked_levels() as levels:
      now = self._clock()
      elapsed = max(0.0, now - levels.stamp)
      levels.stamp = now
      wait_s = 0.0
      if self.request_rate is not None:
        levels.requests = min(self.request_capacity, levels.requests + elapsed * self.request_rate)
        wait_s = max(wait_s, (1 - levels.requests) / self.request_rate)
      if self.token_rate is not None:
        levels.tokens = min(self.token_capacity, levels.tokens + elapsed * self.token_rate)
        wait_s = max(wait_s, (tokens - levels.tokens) / self.token_rate)
      if wait_s <= 0:
        levels.requests -= 1
        levels.tokens -= tokens
      return wait_s

  def _parse(self, saved: str) -> _Levels:
    try:
      return _Levels(**json.loads(saved))
    except (ValueError, TypeError):  # a new file, or one cut by a crash mid-write: start full
      return self._full()

  @contextlib.contextmanager
  def _locked_levels(self):
    if self.state_file is None:
      yield self._levels
      return
    with open(self.state_file, "a+", encoding="utf-8") as handle:
      fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
      handle.seek(0)
      levels = self._parse(handle.read())
      yield levels
      handle.seek(0)
      handle.truncate()
      handle.write(json.dumps(dataclasses.asdict(levels)))
