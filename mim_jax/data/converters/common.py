"""What every converter shares: reading JSON/JSONL items, reading and checking
image files, and the per-record loop that counts skips by reason.

A record that cannot be converted raises ConversationError with a short
`reason` (`malformed`, `missing_image`, `bad_image`, `role_order`, …); the loop
counts it in ProblemCounts and goes on, so one bad line never stops a job.
"""
from __future__ import annotations

import collections
import concurrent.futures
import io
import struct
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from PIL import Image

from mim_jax.data.conversation import IMAGE_PLACEHOLDER, Conversation, ConversationError, Turn, read_json_records
from mim_jax.data.images import MAX_PIXELS
from mim_jax.data.problems import ProblemCounts

# PIL's JPEG draft mode decodes at 1/8 scale: a real decode (truncation shows)
# at a fraction of the cost of a full one.
_CHECK_SIZE = (64, 64)
_IN_FLIGHT_PER_WORKER = 4


def check_image_bytes(data: bytes, where: str) -> tuple[int, int]:
  """Decodes `data` cheaply and returns its (width, height); raises
  ConversationError('bad_image') for bytes PIL cannot decode."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      size = image.size
      if size[0] * size[1] > MAX_PIXELS:
        raise ConversationError("bad_image", f"{where}: {size[0]}x{size[1]} is over {MAX_PIXELS} pixels")
      image.draft("RGB", _CHECK_SIZE)
      image.load()
  except ConversationError:
    raise
  except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError) as error:
    raise ConversationError("bad_image", f"{where}: cannot be decoded ({type(error).__name__}: {error}); "
                                         "re-download it or leave it out") from None
  return size


class ImageFolder:
  """Images named relative to `root`, read as their original encoded bytes."""

  def __init__(self, root: Path):
    if not root.is_dir():
      raise FileNotFoundError(f"image folder {root} does not exist; pass the folder the dataset's image paths are "
                              "relative to with --images")
    self.root = root

  def read(self, name: str) -> tuple[bytes, tuple[int, int]]:
    """The bytes of `name` and the image's (width, height)."""
    path = self.root / name
    if not path.is_file():
      raise ConversationError("missing_image", f"image {path} not found")
    data = path.read_bytes()
    return data, check_image_bytes(data, f"image {path}")


def read_json_items(path: Path) -> Iterator[Any]:
  """The records of a converter's JSON list or JSONL input (bad JSONL lines come out as ConversationErrors)."""
  return read_json_records(path, what="input file", expected="a JSON list of records")


def field(item: Any, key: str, kind: type | tuple[type, ...], where: str):
  """`item[key]`, which must be a `kind`; anything else is a malformed record."""
  if not isinstance(item, dict):
    raise ConversationError("malformed", f"{where}: expected a JSON object, got {type(item).__name__}")
  value = item.get(key)
  if not isinstance(value, kind):
    expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
    raise ConversationError("malformed", f"{where}: field {key!r} is {type(value).__name__}, expected {expected}")
  return value


def convert_each(items: Iterable[Any], to_record: Callable[[int, Any], dict], counts: ProblemCounts,
                 workers: int = 1) -> Iterator[dict]:
  """`to_record(index, item)` for each item, in order, skipping (and counting)
  the ones that raise ConversationError. An item that IS a ConversationError
  (a bad line) is counted as it stands. With `workers` > 1, `to_record` runs
  on that many threads (reading and decoding images releases the GIL); the
  counts are still updated here, in item order."""

  def attempt(index: int, item: Any) -> dict | ConversationError:
    if isinstance(item, ConversationError):
      return item
    try:
      return to_record(index, item)
    except ConversationError as error:
      return error

  for result in _ordered_map(attempt, enumerate(items), workers):
    if isinstance(result, ConversationError):
      counts.skip(result)
      continue
    counts.kept += 1
    yield result


def _ordered_map(function: Callable, argument_tuples: Iterable[tuple], workers: int) -> Iterator:
  """`function(*args)` for each args, results in input order, at most a few
  per worker in flight so an endless input never piles up in memory."""
  if workers <= 1:
    yield from (function(*args) for args in argument_tuples)
    return
  pool = concurrent.futures.ThreadPoolExecutor(workers)
  pending = collections.deque()
  try:
    for args in argument_tuples:
      pending.append(pool.submit(function, *args))
      if len(pending) >= _IN_FLIGHT_PER_WORKER * workers:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
  finally:
    # A consumer that stops early (--max-records) must not wait for work it will never use.
    pool.shutdown(wait=True, cancel_futures=True)


def single_turn(instruction: str, answer: str, name: str, image: str | None = None) -> Conversation:
  """user: `<image>` on its own line, then the instruction (the LLaVA layout;
  no `<image>` for text-only data); assistant: the answer."""
  if not instruction.strip() or not answer.strip():
    raise ConversationError("empty_text", f"{name}: empty instruction or answer")
  user = Turn("user", f"{IMAGE_PLACEHOLDER}\n{instruction}" if image else instruction,
              image_list=(image,) if image else ())
  return Conversation((user, Turn("assistant", answer)), name=name)
