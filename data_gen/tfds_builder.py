"""`textbind_conversations`: a TFDS dataset built from a released-format JSON
file and its image folder (spec §1: the authors' data or ours).

Input (the builder's manual dir):

    conversations.json   released format, a list of {"conversation": [...]}
    images/              every file the conversations name

Records use `mim_jax.data.schema.conversation_features()`; an example's id
and key is the conversation's index in conversations.json. Conversations
that fail to parse or name an image that is not in images/ are dropped (the
spec drops a conversation with any missing image) and counted in the log.
Splits (splits.py) are drawn over the usable ones. Reading back needs no
data_gen import:

    tfds.builder("textbind_conversations", data_dir=DIR).as_dataset(split="train")

finds the prepared files under DIR (importing this module registers the
class, which `download_and_prepare` needs).
"""
from __future__ import annotations

import json
from pathlib import Path

import tensorflow_datasets as tfds
from absl import logging

from data_gen.report import Tally, summary_table
from data_gen.splits import split_indices
from mim_jax.data.conversation import Conversation, ConversationError, conversation_from_json
from mim_jax.data.schema import conversation_features, conversation_record

NAME = "textbind_conversations"
SOURCE = "textbind"


class TextbindConversations(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Released TextBind format → conversation_features records."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put conversations.json (the released TextBind format) and an images/ folder holding every file it names "
      "in one directory and pass it as the manual dir; `python -m data_gen export` does this for generated data.")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="Multi-turn interleaved image-text conversations (TextBind format).",
        features=conversation_features(),
        homepage="https://arxiv.org/abs/2309.08637")

  def _split_generators(self, dl_manager):
    manual = Path(dl_manager.manual_dir)
    conversations, tally = usable_conversations(manual)
    if tally.skipped:
      logging.warning("%s", summary_table(f"{NAME} from {manual}", tally))
    splits = split_indices(len(conversations))
    return {name: self._generate_examples(manual / "images", [conversations[i] for i in indices])
            for name, indices in splits.items() if indices}

  def _generate_examples(self, image_dir: Path, indexed: list[tuple[int, Conversation]]):
    for index, conversation in indexed:
      images = {name: (image_dir / name).read_bytes() for name in set(conversation.images)}
      key = f"{index:08d}"
      yield key, conversation_record(conversation, images, id=key, source=SOURCE)


def usable_conversations(manual: Path) -> tuple[list[tuple[int, Conversation]], Tally]:
  """(index in the file, conversation) for each conversation of
  manual/conversations.json that parses and whose images all exist, in file
  order, and a tally of what was dropped by reason."""
  path = manual / "conversations.json"
  if not path.is_file() or not (manual / "images").is_dir():
    raise FileNotFoundError(f"{manual} needs conversations.json and an images/ folder; "
                            f"{TextbindConversations.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  records = json.loads(path.read_text(encoding="utf-8"))
  if not isinstance(records, list):
    raise ValueError(f"{path}: top level is {type(records).__name__}; the released format is a JSON list")
  tally, usable = Tally(), []
  for index, record in enumerate(records):
    try:
      conversation = conversation_from_json(record, name=f"{path.name}[{index}]")
    except ConversationError as error:
      tally.skip(error.reason, str(error))
      continue
    missing = [name for name in conversation.images if not (manual / "images" / name).is_file()]
    if missing:
      tally.skip("missing_image", f"{conversation.name}: no file images/{missing[0]}")
      continue
    usable.append((index, conversation))
  tally.kept = len(usable)
  return usable, tally


def build(manual_dir: Path, data_dir: Path) -> tfds.core.DatasetBuilder:
  """Prepares the dataset under data_dir (a no-op when it is already there)."""
  builder = TextbindConversations(data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir), compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return builder
