"""Step `export`: kept conversations → the released JSON format and a TFDS
dataset.

    WORK/export/conversations.json     every kept conversation, generation order
    WORK/export/{train,valid,test}.json  the spec's split (splits.py)
    WORK/export/images/                the images they name (hard links when possible)
    WORK/export/tfds/                  textbind_conversations, built from the two above

Every file is rewritten atomically; the TFDS dataset is rebuilt only when
conversations.json changed since it was built (its SHA-256 is kept beside it).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Sequence

from data_gen import tfds_builder
from data_gen.generate_step import conversation_shards, read_generated, record_conversation
from data_gen.report import Tally
from data_gen.shards import atomic_write_bytes, atomic_write_text
from data_gen.splits import split_indices
from data_gen.workdir import WorkDir
from mim_jax.data.conversation import Conversation, conversation_to_json


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


def export_step(work: WorkDir, *, tfds: bool = True) -> tuple[Tally, dict]:
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
    notes["tfds rebuilt"] = int(build_tfds_if_changed(out, out / "tfds", text))
  return Tally(kept=len(conversations)), notes


def build_tfds_if_changed(manual_dir: Path, data_dir: Path, conversations_json: str) -> bool:
  digest = hashlib.sha256(conversations_json.encode("utf-8")).hexdigest()
  stamp = data_dir / "conversations.sha256"
  if stamp.exists() and stamp.read_text() == digest:
    return False
  if data_dir.exists():
    shutil.rmtree(data_dir)
  tfds_builder.build(manual_dir, data_dir)
  atomic_write_text(stamp, digest)
  return True
