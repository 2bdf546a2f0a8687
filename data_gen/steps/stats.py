"""Dataset statistics (spec §1): turns, images by role, words, diversity.

Tokens are runs of word characters and single punctuation marks, read from a
turn's text with its `<image>` placeholders removed; words are the word-
character tokens. Diversity: for each turn position (0 = first user turn, 1 =
first reply, …), take the turns at that position across the dataset, compute
distinct-n = unique n-grams / all n-grams (n-grams never cross turns) for
n = 2, 3, 4 and add the three; the score is the mean over positions, at most
3.0. A position whose turns are all too short for some n counts 0 for that n.
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Sequence

from mim_jax.data.conversation import IMAGE_PLACEHOLDER, Conversation

TOKEN = re.compile(r"\w+|[^\w\s]")
WORD = re.compile(r"\w+")
DIVERSITY_NS = (2, 3, 4)


def tokenize(content: str) -> list[str]:
  return TOKEN.findall(content.replace(IMAGE_PLACEHOLDER, " "))


def distinct_n(token_lists: Sequence[Sequence[str]], n: int) -> float:
  grams = [tuple(tokens[i:i + n]) for tokens in token_lists for i in range(len(tokens) - n + 1)]
  return len(set(grams)) / len(grams) if grams else 0.0


def diversity(conversations: Sequence[Conversation]) -> float:
  by_position = defaultdict(list)
  for conversation in conversations:
    for position, turn in enumerate(conversation.turns):
      by_position[position].append(tokenize(turn.content))
  if not by_position:
    return 0.0
  scores = [sum(distinct_n(turns, n) for n in DIVERSITY_NS) for turns in by_position.values()]
  return sum(scores) / len(scores)


def dataset_stats(conversations: Sequence[Conversation]) -> dict:
  count = len(conversations)
  turns = [turn for conversation in conversations for turn in conversation.turns]
  images = {role: sum(len(t.image_list) for t in turns if t.role == role) for role in ("user", "assistant")}
  words = sum(len(WORD.findall(t.content.replace(IMAGE_PLACEHOLDER, " "))) for t in turns)
  per = (lambda total: total / count) if count else (lambda total: 0.0)
  return {
      "conversations": count,
      "turns": len(turns),
      "turns_per_conversation": per(len(turns)),
      "images": images["user"] + images["assistant"],
      "images_per_conversation": per(images["user"] + images["assistant"]),
      "images_in_user_turns": images["user"],
      "images_in_assistant_turns": images["assistant"],
      "words": words,
      "words_per_turn": words / len(turns) if turns else 0.0,
      "diversity": diversity(conversations),
  }


def stats_table(stats: dict) -> str:
  width = max(map(len, stats))
  lines = ["== stats =="]
  for name, value in stats.items():
    lines.append(f"  {name:<{width}}  {value:.3f}" if isinstance(value, float) else f"  {name:<{width}}  {value}")
  return "\n".join(lines)
