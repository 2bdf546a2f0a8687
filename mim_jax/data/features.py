"""Conversation → fixed-shape numpy arrays: the one feature path that training
and inference share (spec §2 chat template, §3 caption branches and loss).

Layout of one example of length T = `max_len`:

    [ main sequence (positions 0..L-1) | caption branches | padding ]

Main sequence, Llama-2 chat without system prompt. A user turn is
`<s>` + tok("[INST] " + text + " [/INST]"), an assistant turn is
tok(text) + `</s>`; BOS/EOS are ids, never text. Every `<image>` becomes
`num_image_tokens` consecutive `<image>` ids. Images of the whole conversation
are numbered in order of appearance; `image_ids` refers to that numbering.

Whitespace: content is split at `<image>`; every text piece is stripped and
tokenized on its own (empty pieces give no tokens), and the template markers
join their piece with one space. So "a <image> b", "a<image>b" and
"a\\n<image>  b" all give the same ids, at train and at inference time. (The
original tokenized the whole turn at once, so its ids around images depended
on the HF tokenizer's legacy-space handling.) Text that tokenizes to a control
token (`<s>`, `</s>`, `<image>`, `<start>`, `<end>` typed as text) raises,
because it would silently shift the template.

Targets are explicit: `targets[j]` is what input j must predict; nothing is
shifted later. Loss (weight 1) only where the next token is assistant text or
`</s>`, plus the caption-branch tokens. For an assistant image whose run starts
at i: `targets[i-1] = <start>` (weight 1), inputs i..i+N-2 have weight 0, and
the last image token predicts the token after the run. User images and all user
text (BOS, `[INST]`, `[/INST]`) have weight 0. The last main token has weight 0
(its next token is not in the sequence, also after truncation).

Caption branches, one per assistant image, appended in order: inputs
`[<start>, c1…cn, <end>]` (c = the turn's original caption), each predicting
the next, `<end>` weight 0. Branch token k has position i + k: the branch
re-uses its image's positions. A caption longer than N-2 tokens runs past the
image run, so its positions overlap the text after the image (as in the
original), and may exceed max_len - 1.

Mask (T, T), True = may attend: main is causal; a branch token sees main keys
< i (strictly before its image) and its own branch causally; with
`branches_see_earlier_branches` (the original) also every earlier branch. Main
tokens never see branches. Padding tokens attend only to themselves: a row with
no allowed key is well defined in our dense path, but not in every fused kernel
(cuDNN, splash), and a NaN there would poison the loss even at weight 0.
Padding has token `pad_id`, position 0, weight 0, `valid` False.

The `qformer` image medium (`medium_prompt_tokens` = N > 0) replaces each
caption branch by a medium branch `[<start>, pad × N]` with the same
positions and mask and weight 0: the model writes its N learned prompt
embeddings over the pads (MIM.medium_forward), as inference writes them after
a sampled `<start>`, and the mapper regresses their states onto the SD text
encoder's embedding of the caption. `medium_starts[slot]` is the first pad's
index, `medium_valid[slot]` marks the images that have one, and
`medium_captions[slot]` is the caption to embed.

Truncation to max_len, in this order: branches are dropped from the end until
the rest fits (a branch is kept whole or not at all); if the main sequence
alone is too long it is cut at max_len, moved back to the start of an image run
it would split, and images whose runs were cut are dropped together with their
branches. More than `max_images` images left raises `FeatureError`
("too_many_images"): raise `max_images` rather than losing images silently.
What was dropped is counted in `Features.stats`.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Iterable, Iterator, Sequence

import numpy as np

from mim_jax.data.batch_spec import FEATURE_FIELDS
from mim_jax.data.conversation import IMAGE_PLACEHOLDER, Conversation, ConversationError
from mim_jax.data.problems import ProblemCounts
from mim_jax.data.tokenizer import Tokenizer

B_INST, E_INST = "[INST]", "[/INST]"


class FeatureError(ConversationError):
  """A conversation that cannot be turned into features (counted by reason)."""


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
  max_len: int = 768
  max_images: int = 8
  num_image_tokens: int = 32
  caption_branches: bool = True  # off at inference: branches are a training device
  branches_see_earlier_branches: bool = False  # True = the original's mask
  pad_id: int = 0
  medium_prompt_tokens: int = 0  # > 0: the qformer medium's branches instead of caption branches

  def __post_init__(self):
    for name, low in (("max_len", 1), ("max_images", 0), ("num_image_tokens", 1), ("medium_prompt_tokens", 0)):
      if getattr(self, name) < low:
        raise ValueError(f"FeatureConfig.{name} is {getattr(self, name)}; it must be at least {low}")


@dataclasses.dataclass
class Features:
  """One example. Arrays have length T = max_len or M = max_images. Padding
  image slots have `image_starts` 0, `image_ids` -1 and `image_valid` False;
  `image_files` lists the kept images in slot order (what the loader encodes).
  `stats` counts what truncation removed: main_tokens_truncated,
  images_truncated, branches_truncated (their image was cut) and
  branches_over_length (image kept, branch did not fit)."""

  tokens: np.ndarray  # (T,) int32
  targets: np.ndarray  # (T,) int32, what each input predicts
  weights: np.ndarray  # (T,) float32
  positions: np.ndarray  # (T,) int32
  mask: np.ndarray  # (T, T) bool, True = may attend
  valid: np.ndarray  # (T,) bool
  image_starts: np.ndarray  # (M,) int32, index of each image's first token
  image_valid: np.ndarray  # (M,) bool
  image_ids: np.ndarray  # (M,) int32, index into Conversation.images
  medium_starts: np.ndarray  # (M,) int32, first prompt slot of the image's medium branch
  medium_valid: np.ndarray  # (M,) bool
  medium_captions: tuple[str, ...]  # (M,), "" where medium_valid is False
  image_files: tuple[str, ...]
  main_length: int
  length: int
  stats: Counter

  def arrays(self) -> dict[str, np.ndarray]:
    return {name: getattr(self, name) for name in FEATURE_FIELDS}


@dataclasses.dataclass(frozen=True)
class _ImageRun:
  start: int
  image_id: int
  file: str
  caption: str | None  # set for assistant images: they get a caption branch


def build_features(conversation: Conversation, tokenizer: Tokenizer, config: FeatureConfig) -> Features:
  tokens, in_reply, runs = _chat_sequence(conversation, tokenizer, config.num_image_tokens)
  stats = Counter()
  cut = _main_cut(len(tokens), runs, config)
  kept = [run for run in runs if run.start + config.num_image_tokens <= cut]
  if cut < len(tokens):
    stats["main_tokens_truncated"] += len(tokens) - cut
    stats["images_truncated"] += len(runs) - len(kept)
    stats["branches_truncated"] += sum(run.caption is not None for run in runs[len(kept):])
  if len(kept) > config.max_images:
    raise FeatureError(
        "too_many_images",
        f"{conversation.name}: {len(kept)} images after truncation to {config.max_len} tokens, but "
        f"FeatureConfig.max_images is {config.max_images}; raise max_images or filter such conversations")
  branches = _fit_branches(conversation.name, kept, tokenizer, config.max_len - cut, config, stats)

  t = config.max_len
  out = Features(
      tokens=np.full(t, config.pad_id, np.int32), targets=np.zeros(t, np.int32), weights=np.zeros(t, np.float32),
      positions=np.zeros(t, np.int32), mask=np.zeros((t, t), bool), valid=np.zeros(t, bool),
      image_starts=np.zeros(config.max_images, np.int32), image_valid=np.zeros(config.max_images, bool),
      image_ids=np.full(config.max_images, -1, np.int32), medium_starts=np.zeros(config.max_images, np.int32),
      medium_valid=np.zeros(config.max_images, bool), medium_captions=("",) * config.max_images,
      image_files=tuple(run.file for run in kept),
      main_length=cut, length=cut + sum(len(ids) for _, ids in branches), stats=stats,
  )
  _fill_main(out, tokens[:cut], in_reply[:cut], kept, tokenizer.start_id)
  branch_offsets = _fill_branches(out, branches, config.branches_see_earlier_branches,
                                  trained=not config.medium_prompt_tokens)
  pad = np.arange(out.length, t)
  out.mask[pad, pad] = True
  out.valid[:out.length] = True
  for slot, run in enumerate(kept):
    out.image_starts[slot], out.image_ids[slot], out.image_valid[slot] = run.start, run.image_id, True
  if config.medium_prompt_tokens:
    slots = {run.image_id: slot for slot, run in enumerate(kept)}
    captions = list(out.medium_captions)
    for (run, _), offset in zip(branches, branch_offsets):
      slot = slots[run.image_id]
      out.medium_starts[slot], out.medium_valid[slot], captions[slot] = offset + 1, True, run.caption.strip()
    out.medium_captions = tuple(captions)
  return out


def _chat_sequence(conversation: Conversation, tokenizer: Tokenizer, num_image_tokens: int):
  """Main-sequence ids; per id whether it is assistant output (text or `</s>`);
  the image runs in order of appearance."""
  tokens: list[int] = []
  in_reply: list[bool] = []
  runs: list[_ImageRun] = []
  for index, turn in enumerate(conversation.turns):
    where = f"{conversation.name} turn {index} ({turn.role})"
    assistant = turn.role == "assistant"
    pieces = [piece.strip() for piece in turn.content.split(IMAGE_PLACEHOLDER)]
    if not assistant:
      tokens.append(tokenizer.bos_id)
      in_reply.append(False)
      pieces[0] = _join(B_INST, pieces[0])
      pieces[-1] = _join(pieces[-1], E_INST)
    for k, piece in enumerate(pieces):
      if k:
        caption = turn.caption_list[k - 1] if assistant else None
        runs.append(_ImageRun(len(tokens), len(runs), turn.image_list[k - 1], caption))
        tokens += [tokenizer.image_id] * num_image_tokens
        in_reply += [False] * num_image_tokens
      ids = _encode_text(tokenizer, piece, where)
      tokens += ids
      in_reply += [assistant] * len(ids)
    if assistant:
      tokens.append(tokenizer.eos_id)
      in_reply.append(True)
  return tokens, in_reply, runs


def _join(left: str, right: str) -> str:
  return f"{left} {right}" if left and right else left or right


def _encode_text(tokenizer: Tokenizer, text: str, where: str) -> list[int]:
  ids = tokenizer.encode(text)
  control = {tokenizer.bos_id: "<s>", tokenizer.eos_id: "</s>", tokenizer.image_id: "<image>",
             tokenizer.start_id: "<start>", tokenizer.end_id: "<end>"}
  found = sorted({control[i] for i in ids if i in control})
  if found:
    raise FeatureError(
        "control_token_in_text",
        f"{where}: the text {text[:80]!r} contains {', '.join(found)} as text, which would tokenize to a control "
        f"id and shift the chat template; remove or rewrite those strings in the data")
  return ids


def _main_cut(length: int, runs: Sequence[_ImageRun], config: FeatureConfig) -> int:
  """Where the main sequence ends: max_len, moved back to never split an image run."""
  cut = min(length, config.max_len)
  for run in runs:
    if run.start < cut < run.start + config.num_image_tokens:
      return run.start
  return cut


def _fit_branches(name: str, kept: Sequence[_ImageRun], tokenizer: Tokenizer, room: int,
                  config: FeatureConfig, stats: Counter) -> list[tuple[_ImageRun, list[int]]]:
  """The longest prefix of the branches that fits in `room` tokens; the rest
  are dropped from the end and counted."""
  if not (config.caption_branches or config.medium_prompt_tokens):
    return []
  pending = []
  for run in kept:
    if run.caption is not None and config.medium_prompt_tokens:
      pending.append((run, [tokenizer.start_id] + [config.pad_id] * config.medium_prompt_tokens))
    elif run.caption is not None:
      where = f"{name} image {run.image_id} ({run.file}) caption"
      caption_ids = _encode_text(tokenizer, run.caption.strip(), where)
      pending.append((run, [tokenizer.start_id, *caption_ids, tokenizer.end_id]))
  for count, (_, ids) in enumerate(pending):
    if len(ids) > room:
      stats["branches_over_length"] += len(pending) - count
      return pending[:count]
    room -= len(ids)
  return pending


def _fill_main(out: Features, tokens: list[int], in_reply: list[bool], kept: Sequence[_ImageRun], start_id: int):
  length = len(tokens)
  out.tokens[:length] = tokens
  out.positions[:length] = np.arange(length)
  out.mask[:length, :length] = np.tri(length, dtype=bool)
  out.targets[:length - 1] = tokens[1:]
  out.weights[:length - 1] = in_reply[1:]
  for run in kept:
    if run.caption is not None:
      # The model learns to open an image here; the image tokens themselves are inputs.
      out.targets[run.start - 1], out.weights[run.start - 1] = start_id, 1.0


def _fill_branches(out: Features, branches, see_earlier: bool, trained: bool) -> list[int]:
  """Writes the branches after the main sequence; returns where each starts.
  `trained` False (medium branches): no token of theirs has a target."""
  main_length = out.main_length
  offset, offsets = main_length, []
  for run, ids in branches:
    n = len(ids)
    rows = slice(offset, offset + n)
    out.tokens[rows] = ids
    out.positions[rows] = run.start + np.arange(n)
    if trained:
      out.targets[offset:offset + n - 1] = ids[1:]
      out.weights[offset:offset + n - 1] = 1.0
    out.mask[rows, :run.start] = True
    out.mask[rows, rows] = np.tri(n, dtype=bool)
    if see_earlier:
      out.mask[rows, main_length:offset] = True
    offsets.append(offset)
    offset += n
  return offsets


def iter_features(conversations: Iterable[Conversation], tokenizer: Tokenizer, config: FeatureConfig,
                  counts: ProblemCounts | None = None) -> Iterator[Features]:
  """Features of each conversation; ones that fail are skipped and counted in
  `counts.skipped`, truncation and dropped branches summed in `counts.notes`.
  Use a different `ProblemCounts` than the one the reader filled."""
  counts = counts if counts is not None else ProblemCounts()
  for conversation in conversations:
    try:
      features = build_features(conversation, tokenizer, config)
    except ConversationError as error:
      counts.skip(error)
      continue
    counts.kept += 1
    counts.notes.update(features.stats)
    if not features.weights.any():
      counts.notes["no_trained_tokens"] += 1
    yield features


def stack_features(examples: Sequence[Features]) -> dict[str, np.ndarray]:
  """A batch: each array field stacked along a new leading axis."""
  if not examples:
    raise ValueError("stack_features needs at least one example")
  return {name: np.stack([getattr(e, name) for e in examples]) for name in FEATURE_FIELDS}
