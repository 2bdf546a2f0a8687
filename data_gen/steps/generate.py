"""Step `generate`: a round's image tuples → one record per tuple id, in
shards of `shard_size` tuples (generation and cleaning are generation.py's).

Resuming without loss or duplication: a shard in progress is an `AppendLog`
(`<shard>.partial`) that gets one fsynced record per tuple as soon as the
tuple's outcome is final, in tuple order. A rerun keeps those records and
asks the LLM only for the tuples after them; when a shard is complete its
records are written to the shard file at once and the log is removed.

Rule 4 (drop a reply that duplicates an earlier one) depends on every reply
before it, so a rerun first replays the stored replies of all earlier shards
and rounds, in the order a clean run saw them, through the same `Cleaner`.
With a deterministic backend a resumed run therefore writes exactly what an
uninterrupted one would.

Records: data_gen/generated.py.
"""
from __future__ import annotations

import itertools
from pathlib import Path

from tqdm import tqdm

from data_gen.clean import Cleaner
from data_gen.fewshot import Pool
from data_gen.generated import conversation_shards, outcome_record, tally_records
from data_gen.generation import generate_conversations
from data_gen.outcome import GenerationOutcome
from data_gen.shards import (
  AppendLog,
  clear_temporaries,
  jsonl_text,
  read_jsonl,
  require_same_settings,
  shard_name,
  write_shard,
)
from data_gen.steps.sample import SEED, ImageTuple, read_round
from data_gen.workdir import WorkDir
from mim_jax.data.problems import ProblemCounts
from mim_jax.llm.client import LLMClient


def replay(cleaner: Cleaner, records) -> None:
  """Feeds stored replies through `cleaner` so its memory (rule 4) is what
  it was when those records were first cleaned."""
  for record in records:
    if record["text"]:
      cleaner(record["text"], [tuple(i) for i in record["images"]], name=record["id"])


def tuple_images(image_tuple: ImageTuple, pairs: dict[str, dict]) -> list[tuple[str, str, str]]:
  return [(pairs[p]["image"], pairs[p]["caption"], pairs[p]["url"]) for p in image_tuple.pairs]


def check_settings(work: WorkDir, round_index: int, *, shard_size: int, seed: int) -> None:
  """A round's shards hold tuples by position, so every run of it (local or
  Beam) must cut them the same way."""
  require_same_settings(work.conversations / f"settings-round-{round_index:03d}.json",
                        {"tuples_per_shard": shard_size, "seed": seed})


def generate_step(work: WorkDir, client: LLMClient, pool: Pool, *, round_index: int = 0, seed: int = SEED,
                  shard_size: int = 64) -> tuple[ProblemCounts, dict]:
  if shard_size < 1:
    raise ValueError(f"shard_size is {shard_size}; give at least 1 tuple per shard")
  tuples = read_round(work, round_index)
  pairs = work.pair_table()
  unknown = [p for t in tuples for p in t.pairs if p not in pairs]
  if unknown:
    raise ValueError(f"round {round_index} names pairs that ingest did not keep (e.g. {unknown[0]}); the samples "
                     f"belong to another work dir or ingest was rerun differently: resample into a fresh --work")
  check_settings(work, round_index, shard_size=shard_size, seed=seed)
  clear_temporaries(work.conversations)
  cleaner = Cleaner()
  for shard in conversation_shards(work):
    if int(shard.name.split("-")[1]) < round_index:
      replay(cleaner, read_jsonl(shard))
  tally, done_before = ProblemCounts(), 0
  progress = tqdm(total=len(tuples), desc=f"generate round {round_index}", unit="conversation")
  for index in itertools.count():
    chunk = tuples[index * shard_size:(index + 1) * shard_size]
    if not chunk:
      break
    shard = work.conversations / shard_name(index, ".jsonl", prefix=f"round-{round_index:03d}-shard")
    if shard.exists():
      # A kill between writing the shard and removing its log leaves the log behind.
      _partial(shard).unlink(missing_ok=True)
      records = list(read_jsonl(shard))
      replay(cleaner, records)
      done_before += 1
      progress.update(len(chunk))
    else:
      records = _generate_shard(shard, chunk, pairs, client, pool, cleaner, seed, progress)
    tally.add(tally_records(records))
  progress.close()
  return tally, {"shards done before this run": done_before}


def _partial(shard: Path) -> Path:
  return shard.with_name(shard.name + ".partial")


def _generate_shard(shard: Path, chunk: list[ImageTuple], pairs: dict, client: LLMClient, pool: Pool,
                    cleaner: Cleaner, seed: int, progress) -> list[dict]:
  images = {t.id: tuple_images(t, pairs) for t in chunk}
  partial = _partial(shard)
  with AppendLog(partial, key="id") as log:
    replay(cleaner, [log.records[t.id] for t in chunk if t.id in log])
    remaining = [(t.id, images[t.id]) for t in chunk if t.id not in log]
    progress.update(len(chunk) - len(remaining))

    def keep(outcome: GenerationOutcome) -> None:
      log.append(outcome_record(outcome, images[outcome.id]))
      progress.update(1)

    if remaining:
      generate_conversations(remaining, pool, client, seed=seed, cleaner=cleaner, on_outcome=keep)
    records = [log.records[t.id] for t in chunk]
  write_shard(shard, jsonl_text(records), tally_records(records))
  partial.unlink()
  return records
