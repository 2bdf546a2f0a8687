"""Step `export`: kept conversations → the released JSON format and a TFDS
dataset.

    WORK/export/conversations.json     every kept conversation, generation order
    WORK/export/{train,valid,test}.json  the spec's split (splits.py)
    WORK/export/images/                the images they name (hard links when possible)
    WORK/export/tfds/textbind/1.0.0/   the `textbind` TFDS dataset: the three split files
                                       through convert_datasets' textbind converter, each
                                       its own split (the split rule: convert_datasets.convert)

Every file is rewritten atomically; the TFDS dataset is rebuilt only when
conversations.json changed since it was built (its SHA-256 is kept beside it).
Training reads it with data.data_dir=WORK/export/tfds and the source `textbind`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

from data_gen.generated import conversation_shards, read_generated, record_conversation
from data_gen.report import summary_table
from data_gen.shards import atomic_write_bytes, atomic_write_text
from data_gen.splits import split_indices
from data_gen.steps.tfds import TEXTBIND
from data_gen.workdir import WorkDir
from mim_jax.data.conversation import Conversation, conversation_to_json
from mim_jax.data.convert_datasets import convert
from mim_jax.data.problems import ProblemCounts

log = logging.getLogger(__name__)


def released_json(conversations: Sequence[Conversation]) -> str:
  return json.dumps([conversation_to_json(c) for c in conversations], ensure_ascii=False, indent=2)


def link_images(names, source: Path, target: Path) -> None:
  target.mkdir(parents=True, exist_ok=True)
  for name in names:
    destination = target / name
    if destination.exists():
      continue
    try:
      os.link(source / name, destination)
    except OSError:  # another filesystem, or links not allowed: copy (atomically, so a kill leaves no half file)
      atomic_write_bytes(destination, (source / name).read_bytes())


def export_step(work: WorkDir, *, tfds: bool = True) -> tuple[ProblemCounts, dict]:
  if not conversation_shards(work):
    raise FileNotFoundError(f"{work.conversations} holds no finished shard; run "
                            f"`python -m data_gen generate --work {work.root}` first")
  records = read_generated(work)
  conversations = [record_conversation(r) for r in records if r["kept"]]
  out = work.export
  text = released_json(conversations)
  atomic_write_text(out / "conversations.json", text)
  splits = split_indices(len(conversations))
  for name, indices in splits.items():
    atomic_write_text(out / f"{name}.json", released_json([conversations[i] for i in indices]))
  link_images(sorted({name for c in conversations for name in c.images}), work.images, out / "images")
  notes = {f"{name} split": len(indices) for name, indices in splits.items()}
  if tfds:
    splits_present = [name for name, indices in splits.items() if indices]
    notes["tfds rebuilt"] = int(build_tfds_if_changed(out, splits_present, text))
  return ProblemCounts(kept=len(conversations)), notes


def build_tfds_if_changed(out: Path, splits: Sequence[str], conversations_json: str) -> bool:
  """(Re)writes out/tfds from out/SPLIT.json for each of `splits` (an empty
  split gets no TFDS split) unless conversations.json is what it was built from."""
  data_dir = out / "tfds"
  digest = hashlib.sha256(conversations_json.encode("utf-8")).hexdigest()
  stamp = data_dir / "conversations.sha256"
  if stamp.exists() and stamp.read_text() == digest:
    return False
  if data_dir.exists():
    shutil.rmtree(data_dir)
  counts = {}
  convert(TEXTBIND, {name: out / f"{name}.json" for name in splits}, out / "images", data_dir, counts=counts)
  for name, split_counts in counts.items():
    if split_counts.skipped:  # e.g. an image file removed from out/images by hand: reported, not fatal
      log.warning("%s", summary_table(f"export to TFDS, {name} split", split_counts))
  atomic_write_text(stamp, digest)
  return True
