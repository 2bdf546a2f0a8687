"""TextBind conversations: the released JSON format, read and written exactly.

A file is a JSON list of `{"conversation": [turn, …]}`; a turn is
`{"role": "user"|"assistant", "content": "text with <image> placeholders",
"image_list": [file…], "caption_list": [caption…], "url_list": [url…]}`
(spec §1). Keys we do not know are kept in `extra` and written back, so a
read → write round trip loses nothing. A missing list reads as empty and is
written back as `[]`.

Every `Conversation` is valid by construction: the checks run in
`__post_init__`, so code that builds conversations (stage-1 samples, the chat
server) gets the same errors as the file reader. Problems raise
`ConversationError`, whose `reason` is a short key that batch readers count.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from mim_jax.data.problems import ProblemCounts

IMAGE_PLACEHOLDER = "<image>"
ROLES = ("user", "assistant")
TURN_KEYS = ("role", "content", "image_list", "caption_list", "url_list")


class ConversationError(ValueError):
  """A record that cannot be used; `reason` is the key it is counted under."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Turn:
  role: str
  content: str
  image_list: tuple[str, ...] = ()
  caption_list: tuple[str, ...] = ()
  url_list: tuple[str, ...] = ()
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    # Accept lists from callers; tuples keep the dataclass comparable and immutable.
    for name in ("image_list", "caption_list", "url_list"):
      object.__setattr__(self, name, tuple(getattr(self, name)))

  @property
  def num_images(self) -> int:
    return self.content.count(IMAGE_PLACEHOLDER) if isinstance(self.content, str) else 0


@dataclasses.dataclass(frozen=True)
class Conversation:
  """Turns alternate user/assistant starting with user. A conversation may end
  on a user turn (an inference prompt). `name` is how errors refer to it."""

  turns: tuple[Turn, ...]
  name: str = "conversation"
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    object.__setattr__(self, "turns", tuple(self.turns))
    if not self.turns:
      raise ConversationError("empty", f"{self.name}: has no turns; a conversation needs at least one user turn")
    for index, turn in enumerate(self.turns):
      _check_turn(turn, f"{self.name} turn {index}")
      expected = ROLES[index % 2]
      if turn.role != expected:
        fix = "drop the leading assistant turn" if index == 0 else "merge consecutive turns of one role"
        raise ConversationError(
            "role_order",
            f"{self.name} turn {index}: role is {turn.role!r} but turns must alternate user/assistant starting "
            f"with user, so turn {index} must be {expected!r}; {fix}")

  @property
  def images(self) -> tuple[str, ...]:
    """All image files in order of appearance, user and assistant turns alike."""
    return tuple(file for turn in self.turns for file in turn.image_list)


def _check_turn(turn: Turn, where: str) -> None:
  if turn.role not in ROLES:
    raise ConversationError("bad_role", f"{where}: role {turn.role!r} is not one of {ROLES}")
  if not isinstance(turn.content, str):
    raise ConversationError("malformed", f"{where}: content is {type(turn.content).__name__}, expected a string")
  for name in ("image_list", "caption_list", "url_list"):
    if not all(isinstance(item, str) for item in getattr(turn, name)):
      raise ConversationError("malformed", f"{where}: {name} must hold strings only")
  where = f"{where} ({turn.role})"
  images = len(turn.image_list)
  if turn.num_images != images:
    raise ConversationError(
        "image_count",
        f"{where}: content has {turn.num_images} {IMAGE_PLACEHOLDER} placeholders but image_list has {images} "
        f"files; list exactly one file per placeholder, in order")
  # User images are inputs: their captions are never trained on, so data
  # converted from other sets (LLaVA, …) may leave caption_list empty there.
  captions = len(turn.caption_list)
  if captions != images and not (turn.role == "user" and captions == 0):
    raise ConversationError(
        "caption_count",
        f"{where}: caption_list has {captions} captions for {images} images; every assistant image needs its "
        f"original caption (user turns may leave caption_list empty)")
  if turn.url_list and len(turn.url_list) != images:
    raise ConversationError(
        "url_count", f"{where}: url_list has {len(turn.url_list)} urls for {images} images; give one per image or none")


def conversation_from_json(record: Any, name: str = "conversation") -> Conversation:
  """One released-format record → `Conversation` (raises ConversationError)."""
  if not isinstance(record, dict) or not isinstance(record.get("conversation"), list):
    raise ConversationError("malformed", f"{name}: expected an object with a 'conversation' list of turns")
  turns = []
  for index, raw in enumerate(record["conversation"]):
    if not isinstance(raw, dict) or "role" not in raw or "content" not in raw:
      raise ConversationError("malformed", f"{name} turn {index}: expected an object with 'role' and 'content'")
    lists = {}
    for key in ("image_list", "caption_list", "url_list"):
      value = raw.get(key)
      value = [] if value is None else value
      if not isinstance(value, list):
        raise ConversationError("malformed", f"{name} turn {index}: {key} is {type(value).__name__}, expected a list")
      lists[key] = value
    extra = {k: v for k, v in raw.items() if k not in TURN_KEYS}
    turns.append(Turn(role=raw["role"], content=raw["content"], extra=extra, **lists))
  return Conversation(tuple(turns), name=name, extra={k: v for k, v in record.items() if k != "conversation"})


def conversation_to_json(conversation: Conversation) -> dict:
  turns = []
  for turn in conversation.turns:
    turns.append({
        "role": turn.role, "content": turn.content, "image_list": list(turn.image_list),
        "caption_list": list(turn.caption_list), "url_list": list(turn.url_list), **turn.extra,
    })
  return {"conversation": turns, **conversation.extra}


def read_conversations(path: str | os.PathLike, counts: ProblemCounts | None = None) -> Iterator[Conversation]:
  """Yields the valid conversations of a released-format file (`.json`, a
  list) or a `.jsonl` file (one record a line). Bad records are skipped and
  counted in `counts`; a file that is not JSON at all raises."""
  path = Path(path)
  counts = counts if counts is not None else ProblemCounts()
  for index, record in enumerate(read_json_records(path)):
    try:
      if isinstance(record, ConversationError):
        raise record
      conversation = conversation_from_json(record, name=f"{path.name}[{index}]")
    except ConversationError as error:
      counts.skip(error)
      continue
    counts.kept += 1
    yield conversation


def read_json_records(path: Path, what: str = "conversation file",
                      expected: str = "the released format, a JSON list of {'conversation': [...]} objects"
                      ) -> Iterator[Any]:
  """The items of a JSON list file, or of a JSONL file (one a line). A JSONL
  line that is not JSON comes out as a ConversationError to count; a `.json`
  file that does not parse raises, since nothing in it can be used. `what` and
  `expected` name the file and its format in those errors."""
  if not path.is_file():
    raise FileNotFoundError(f"{what} {path} not found")
  if path.suffix == ".jsonl":
    with path.open(encoding="utf-8") as lines:
      for number, line in enumerate(lines, 1):
        if line.strip():
          try:
            yield json.loads(line)
          except json.JSONDecodeError as error:
            yield ConversationError("malformed", f"{path.name} line {number}: not JSON ({error})")
    return
  try:
    records = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as error:
    raise ValueError(f"{path}: not valid JSON ({error}); expected {expected}") from None
  if not isinstance(records, list):
    raise ValueError(f"{path}: top level is {type(records).__name__}; expected {expected}")
  yield from records


def write_conversations(conversations: Iterable[Conversation], path: str | os.PathLike, indent: int | None = 2) -> int:
  """Writes the released format (a `.jsonl` path gets one record a line);
  returns how many conversations were written."""
  path = Path(path)
  records = [conversation_to_json(c) for c in conversations]
  if path.suffix == ".jsonl":
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
  else:
    path.write_text(json.dumps(records, ensure_ascii=False, indent=indent), encoding="utf-8")
  return len(records)
