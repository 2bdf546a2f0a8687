"""Tool `tfds`: a released-format JSON file and its image folder (spec §1:
the authors' data or ours) → the `textbind` TFDS dataset in WORK/tfds.

It is `python -m mim_jax.data.convert_datasets textbind --input train=FILE
--images DIR --out WORK/tfds`, the one TextBind → TFDS path (see
`convert_datasets.convert` for the split rule: the file is the train split,
as given). Reading back needs no data_gen import:

    tfds.builder("textbind", data_dir="WORK/tfds").as_dataset(split="train")
"""
from __future__ import annotations

from pathlib import Path

from mim_jax.data.convert_datasets import convert
from mim_jax.data.problems import ProblemCounts

TEXTBIND = "textbind"


def released_tfds(json_path: Path, images: Path, data_dir: Path) -> tuple[ProblemCounts, dict]:
  """Rewrites the dataset on every run (a rerun replaces the version it wrote)."""
  for path in (json_path, images):
    if not path.exists():
      raise FileNotFoundError(f"{path} does not exist; pass the released JSON file and its image folder")
  counts: dict[str, ProblemCounts] = {}
  convert(TEXTBIND, {"train": json_path}, images, data_dir, overwrite=True, counts=counts)
  return counts["train"], {f"{split} split": split_counts.kept for split, split_counts in counts.items()}
