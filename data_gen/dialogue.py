"""The generator's text format: `Human:` / `Assistant:` lines with images
inline as `<imgX> CAPTION </imgX>` (X = 0..k−1, local to one conversation).

Prompts, the template backend, the few-shot pool, the cleaner and the
annotation CSV all read or write this one format, so its parsing lives here.
"""
from __future__ import annotations

import dataclasses
import re

from mim_jax.data.conversation import IMAGE_PLACEHOLDER, Conversation

HUMAN = "Human:"
ASSISTANT = "Assistant:"
MARKERS = (HUMAN, ASSISTANT)
ROLE_OF_MARKER = {HUMAN: "user", ASSISTANT: "assistant"}
MARKER_OF_ROLE = {role: marker for marker, role in ROLE_OF_MARKER.items()}

# A pair never spans lines: captions are one line, and a "pair" across turns is two broken tags.
PAIRED_TAG = re.compile(r"<img(\d+)>(.*?)</img\1>")
OPENING_TAG = re.compile(r"<img(\d+)>")
CLOSING_TAG = re.compile(r"</img(\d+)>")
ANY_TAG = re.compile(r"</?img(\d+)>")


def image_tag(index: int, caption: str) -> str:
  return f"<img{index}> {caption} </img{index}>"


def image_list_text(captions) -> str:
  """One tagged image per line: how a prompt lists the images it may use."""
  return "\n".join(image_tag(index, caption) for index, caption in enumerate(captions))


@dataclasses.dataclass(frozen=True)
class RawTurn:
  marker: str  # HUMAN, ASSISTANT, or "" for text before the first marker
  text: str  # everything after the marker, continuation lines joined with "\n"


def split_turns(text: str) -> list[RawTurn]:
  """A turn starts at a line beginning with a role marker; a line without one
  joins the turn before it (spec §1 rule 6). Non-blank text before the first
  marker becomes a turn with marker "" so the caller can reject it."""
  turns: list[RawTurn] = []
  marker, lines = "", []
  for line in text.splitlines():
    stripped = line.lstrip()
    found = next((m for m in MARKERS if stripped.startswith(m)), None)
    if found is None:
      lines.append(line)
      continue
    if marker or "".join(lines).strip():
      turns.append(RawTurn(marker, "\n".join(lines).strip()))
    marker, lines = found, [stripped[len(found):]]
  if marker or "".join(lines).strip():
    turns.append(RawTurn(marker, "\n".join(lines).strip()))
  return turns


def join_turns(turns) -> str:
  return "\n".join(f"{t.marker} {t.text}" for t in turns)


def render_conversation(conversation: Conversation) -> tuple[str, list[str]]:
  """A released-format conversation back in the generator's format, images
  numbered by first appearance: (dialogue text, captions in that order).
  Annotation exports and few-shot examples use this."""
  captions: list[str] = []
  index_of: dict[str, int] = {}
  lines = []
  for turn in conversation.turns:
    pieces = turn.content.split(IMAGE_PLACEHOLDER)
    text = pieces[0]
    for position, piece in enumerate(pieces[1:]):
      file = turn.image_list[position]
      caption = turn.caption_list[position] if turn.caption_list else ""
      if file not in index_of:
        index_of[file] = len(captions)
        captions.append(caption)
      text += image_tag(index_of[file], caption) + piece
    lines.append(f"{MARKER_OF_ROLE[turn.role]} {text}")
  return "\n".join(lines), captions


def renumber_images(dialogue: str) -> tuple[str, list[str]]:
  """Renumbers the paired tags of `dialogue` 0, 1, … by first appearance and
  returns (dialogue, captions in that order). A crop that drops the turn
  holding <img0> still yields a dialogue whose images start at <img0>."""
  order: dict[str, int] = {}
  captions: list[str] = []

  def renumber(match: re.Match) -> str:
    old, caption = match.group(1), match.group(2).strip()
    if old not in order:
      order[old] = len(captions)
      captions.append(caption)
    return image_tag(order[old], caption)

  return PAIRED_TAG.sub(renumber, dialogue), captions
