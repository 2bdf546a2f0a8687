"""Fetching images: bytes in hand, a local file, or an HTTP(S) URL with a
timeout, retries with backoff for the failures that may pass (timeouts,
connection errors, 429 and 5xx), and a polite concurrency limit — a global
worker count and a per-host cap, so one slow site cannot take every worker.

Failures raise `Skip` with the reason a run counts: http_<status>, timeout,
connection_error, too_large, bad_url, missing_file.
"""
from __future__ import annotations

import dataclasses
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from data_gen.report import Skip
from data_gen.sources.pairs import RawPair

USER_AGENT = "mim-jax-data-gen/1.0 (research dataset builder; one request per image)"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class FetchOptions:
  timeout_s: float = 10.0
  retries: int = 2  # attempts after the first, for failures that may pass
  backoff_s: float = 1.0  # doubled after every failed attempt
  max_bytes: int = 32 << 20
  workers: int = 16
  per_host: int = 4


class Fetcher:
  """Loads the image bytes of `RawPair`s; thread-safe, one per run."""

  def __init__(self, options: FetchOptions = FetchOptions()):
    self.options = options
    self._host_slots: dict[str, threading.BoundedSemaphore] = defaultdict(
        lambda: threading.BoundedSemaphore(options.per_host))
    self._lock = threading.Lock()

  def image_bytes(self, pair: RawPair) -> bytes:
    if pair.data is not None:
      return pair.data
    if pair.path:
      path = Path(pair.path)
      if not path.is_file():
        raise Skip("missing_file", f"{pair.pair_id}: image file {path} does not exist")
      return path.read_bytes()
    return self.fetch_url(pair.url, name=pair.pair_id)

  def fetch_url(self, url: str, *, name: str) -> bytes:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
      raise Skip("bad_url", f"{name}: {url!r} is not an http(s) URL")
    with self._lock:
      slot = self._host_slots[parsed.netloc]
    delay = self.options.backoff_s
    for _ in range(self.options.retries):
      try:
        with slot:
          return self._get(url, name)
      except _Retryable:
        time.sleep(delay)
        delay *= 2
    try:
      with slot:
        return self._get(url, name)
    except _Retryable as failure:
      raise Skip(failure.reason, f"{name}: {failure} (after {self.options.retries + 1} attempts)") from None

  def _get(self, url: str, name: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
      with urllib.request.urlopen(request, timeout=self.options.timeout_s) as response:
        data = response.read(self.options.max_bytes + 1)
    except urllib.error.HTTPError as error:
      if error.code in RETRY_STATUSES:
        raise _Retryable(f"http_{error.code}", f"{url} answered HTTP {error.code}") from None
      raise Skip(f"http_{error.code}", f"{name}: {url} answered HTTP {error.code} {error.reason}") from None
    except (TimeoutError, socket.timeout) as error:
      raise _Retryable("timeout", f"{url} timed out after {self.options.timeout_s}s ({error})") from None
    except urllib.error.URLError as error:
      if isinstance(error.reason, (TimeoutError, socket.timeout)):
        raise _Retryable("timeout", f"{url} timed out after {self.options.timeout_s}s") from None
      raise _Retryable("connection_error", f"{url}: {error.reason}") from None
    except (ConnectionError, OSError) as error:
      raise _Retryable("connection_error", f"{url}: {type(error).__name__}: {error}") from None
    if len(data) > self.options.max_bytes:
      raise Skip("too_large", f"{name}: {url} is over {self.options.max_bytes} bytes")
    return data


class _Retryable(Exception):
  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


def map_concurrently(function: Callable[[T], object], items: Iterable[T], workers: int) -> Iterator[object]:
  """`function` over `items` on `workers` threads, results in input order;
  an exception is returned in its item's place, never raised, so one bad
  record cannot stop the others."""

  def guarded(item):
    try:
      return function(item)
    except Exception as error:  # noqa: BLE001 — handed back to the caller, who counts it
      return error

  with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
    yield from pool.map(guarded, items)
