"""Post-processing of generated dialogues (spec §1 step 3), and conversion of
the ones kept into the released format.

    clean_generation(text, images, *, name="conversation", seen=None,
                     max_caption_distance=0.1) -> Conversation | Rejection
    Cleaner(max_caption_distance=0.1)   # holds `seen` and per-rule counts
      cleaner(text, images, name) -> Conversation | Rejection
      cleaner.counts: Counter ('kept' and one key per rule)
    response_fingerprint(text) -> str   # what rule 4 compares, for cross-shard dedup

`images` is the conversation's image tuple in prompt order: a sequence of
(file, caption, url), so `<imgX>` is images[X]. A dialogue is rejected under
the FIRST rule it breaks, in the spec's order (keys of RULES). A dialogue
that passes them all can still fail the released format's own checks (a
literal "<image>" in the reply: reason "image_count", from conversation.py). Rule 4 needs
every earlier response: pass the same `seen` set (or one Cleaner) to all
calls; across Beam shards, dedupe the kept outcomes' fingerprints afterwards.

A kept dialogue becomes a `Conversation`: Human → user, Assistant →
assistant; each `<imgX> caption </imgX>` becomes `<image>` with image_list
[file], caption_list [the ORIGINAL caption, not the LLM's copy] and url_list
[url] (url_list left empty when the tuple has no urls).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

from data_gen.dialogue import ANY_TAG, CLOSING_TAG, HUMAN, MARKERS, OPENING_TAG, PAIRED_TAG, ROLE_OF_MARKER, split_turns
from data_gen.outcome import ImageRef, Rejection
from mim_jax.data.conversation import IMAGE_PLACEHOLDER, Conversation, ConversationError, Turn

RULES = {
    "duplicate_image_tag": "1: an image tag appears more than once",
    "unknown_image_index": "2: references an image index that was not provided",
    "no_image_pair": "3: contains no paired image tag",
    "duplicate_response": "4: duplicates an earlier response",
    "no_human": "5: has no 'Human:'",
    "role_order": "6: roles do not alternate starting with Human, or a turn holds both markers",
    "too_few_messages": "7: fewer than 3 messages",
    "caption_changed": "8: an inline caption differs from the original (normalized edit distance)",
}
MIN_MESSAGES = 3
# With the space before it, so "see <img1> this" becomes "see this".
_UNPAIRED_TAG = re.compile(r" ?" + ANY_TAG.pattern)


def response_fingerprint(text: str) -> str:
  # Whitespace-insensitive: the same reply re-wrapped is still a duplicate.
  return " ".join(text.split())


def clean_generation(text: str, images: Sequence[ImageRef], *, name: str = "conversation",
                     seen: set[str] | None = None, max_caption_distance: float = 0.1) -> Conversation | Rejection:
  def reject(reason: str, detail: str) -> Rejection:
    return Rejection(reason, f"{name}: {detail}", text)

  openings = Counter(int(i) for i in OPENING_TAG.findall(text))
  closings = Counter(int(i) for i in CLOSING_TAG.findall(text))
  repeated = sorted(i for i in openings | closings if openings[i] > 1 or closings[i] > 1)
  if repeated:
    return reject("duplicate_image_tag", f"image tag <img{repeated[0]}> appears more than once")
  unknown = sorted(i for i in openings | closings if i >= len(images))
  if unknown:
    return reject("unknown_image_index", f"<img{unknown[0]}> but only {len(images)} images were provided")
  if not PAIRED_TAG.search(text):
    return reject("no_image_pair", "no <imgX> caption </imgX> pair on one line")
  if seen is not None:
    fingerprint = response_fingerprint(text)
    if fingerprint in seen:
      return reject("duplicate_response", "same text as an earlier response")
    seen.add(fingerprint)
  if HUMAN not in text:
    return reject("no_human", f"no {HUMAN!r} marker")
  turns = split_turns(text)
  for index, turn in enumerate(turns):
    expected = MARKERS[index % 2]
    if turn.marker != expected:
      found = repr(turn.marker) if turn.marker else "text without a marker"
      return reject("role_order", f"turn {index} starts with {found}, expected {expected!r}")
    other = next((m for m in MARKERS if m in turn.text), None)
    if other:
      return reject("role_order", f"turn {index} ({turn.marker}) also holds {other!r}")
  if len(turns) < MIN_MESSAGES:
    return reject("too_few_messages", f"{len(turns)} messages, need at least {MIN_MESSAGES}")
  texts = [_drop_unpaired_tags(turn.text) for turn in turns]
  for turn_text in texts:
    for index, caption in PAIRED_TAG.findall(turn_text):
      original = images[int(index)][1].strip()
      limit = int(max_caption_distance * len(original))
      distance = levenshtein(caption.strip(), original, limit)
      if distance > limit:
        return reject("caption_changed", f"<img{index}> caption {caption.strip()!r} is more than "
                      f"{max_caption_distance:g} × len away from the original {original!r}")
  try:
    return Conversation(tuple(_to_turn(turn.marker, turn_text, images) for turn, turn_text in zip(turns, texts)),
                        name=name)
  except ConversationError as error:  # the released format's own checks, e.g. a literal "<image>" in the reply
    return reject(error.reason, str(error))


def _drop_unpaired_tags(text: str) -> str:
  """Removes opening tags that are never closed (spec: before rule 8) and, by
  the same token, closing tags never opened, so no stray markup reaches the
  released text."""
  pieces, last = [], 0
  for match in PAIRED_TAG.finditer(text):
    pieces.append(_UNPAIRED_TAG.sub("", text[last:match.start()]))
    pieces.append(match.group(0))
    last = match.end()
  pieces.append(_UNPAIRED_TAG.sub("", text[last:]))
  return "".join(pieces).strip()


def _to_turn(marker: str, text: str, images: Sequence[ImageRef]) -> Turn:
  files, captions, urls = [], [], []

  def to_placeholder(match) -> str:
    file, caption, url = images[int(match.group(1))]
    files.append(file)
    captions.append(caption)
    urls.append(url)
    return IMAGE_PLACEHOLDER

  content = PAIRED_TAG.sub(to_placeholder, text)
  return Turn(ROLE_OF_MARKER[marker], content, files, captions, urls if any(urls) else [])


def levenshtein(a: str, b: str, limit: int) -> int:
  """Character edit distance, or limit + 1 as soon as it must exceed `limit`.
  Only a band of width 2·limit+1 around the diagonal can hold values ≤ limit,
  so this costs O(len·limit) instead of O(len²): captions are copied exactly
  almost always, and cleaning must stay far below a millisecond."""
  if a == b:
    return 0
  over = limit + 1
  if abs(len(a) - len(b)) > limit:
    return over
  previous = [min(j, over) for j in range(len(b) + 1)]
  for i in range(1, len(a) + 1):
    low, high = max(1, i - limit), min(len(b), i + limit)
    current = [over] * (len(b) + 1)
    current[0] = min(i, over)
    char = a[i - 1]
    for j in range(low, high + 1):
      current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != b[j - 1]), over)
    if min(current[low - 1:high + 1]) > limit:
      return over
    previous = current
  return previous[len(b)]


class Cleaner:
  """clean_generation with one `seen` set (rule 4) and per-rule counts."""

  def __init__(self, max_caption_distance: float = 0.1):
    self.max_caption_distance = max_caption_distance
    self.seen: set[str] = set()
    self.counts: Counter = Counter()

  def __call__(self, text: str, images: Sequence[ImageRef], name: str = "conversation") -> Conversation | Rejection:
    result = clean_generation(text, images, name=name, seen=self.seen, max_caption_distance=self.max_caption_distance)
    self.counts["kept" if isinstance(result, Conversation) else result.reason] += 1
    return result
