"""embed → cluster/sample → generate → clean → write as an Apache Beam
pipeline: the same code on the DirectRunner, Dataflow, Flink or Spark.

    python -m data_gen beam --work W --round N [the embed/cluster/sample/generate flags] \
        --beam-arg=--runner=DataflowRunner --beam-arg=--project=… --llm-workers 50

Input: W's ingested pairs (run `ingest` first; images must be readable by
every worker, e.g. W on GCS through a fuse mount). Output: the files local
runs of embed, cluster, sample --round N and generate --round N write
(embeddings/, kmeans.npz, clusters.json, samples/round-NNN.jsonl and that
round's conversations/ shards), byte for byte; run `export` and `stats`
after the last round.

Parallelism: every worker holds the pair table (id → caption, url, image
name) as a side input, about 200 bytes a pair; one pair shard per embed
element, written as the local step writes it; one global step clusters and
samples (it needs every embedding; it is the local steps' own code); each
conversation shard's tuples are generated together on one worker after a
reshuffle; cleaning is per reply plus a group-by on the rule-4 fingerprint
(parallel_clean.py), with the stored records of earlier rounds and of this
round's finished shards in the groups, as a sequential run has seen them;
shards are written by key.

Rerunning skips finished work as the local steps do: embedding shards that
exist, clusters.json, a round already sampled, conversation shards already
written. A conversation shard's replies are also kept in W/beam/ as soon as
they are cleaned alone, so a run killed before rule 4 (a global barrier)
asks the LLM only for the shards it had not finished; W/beam/ is removed
when the round is written. With a deterministic backend a resumed run writes
exactly what an uninterrupted one would (as local generate).

Rate limit: every generate worker gets `LLMConfig.split_across(llm_workers)`
(see mim_jax/llm/rate_limit.py): set --llm-workers to the runner's maximum
worker count (Dataflow: max_num_workers × threads per worker) so all of them
together stay under the quota. On one machine, `--llm rate_state_file=PATH`
shares one bucket among processes exactly.

apache-beam is optional: 2.77 pins pillow<13, protobuf<7 and pyarrow<26, which
this project's pins exceed, so it is not in requirements.txt; install
requirements-beam.txt into a directory beside the venv and put that on
PYTHONPATH (see that file).
"""
from __future__ import annotations

import asyncio
from pathlib import Path

try:
  import apache_beam as beam
  from apache_beam.metrics.metric import MetricsFilter
  from apache_beam.options.pipeline_options import PipelineOptions
except ImportError as error:
  raise ImportError(
      "data_gen.steps.beam needs apache-beam, which is not installed: its releases pin pillow<13 and "
      "protobuf<7, older than this project's pins, so it goes beside the venv: `.venv/bin/pip install --no-deps "
      "--target .beam_site -r requirements-beam.txt`, then run with PYTHONPATH=.beam_site. The local steps "
      "(`python -m data_gen run`) need none of it.") from error

from data_gen.fewshot import load_pool
from data_gen.generated import conversation_shards, outcome_record, tally_records
from data_gen.generation import generate_conversations_async
from data_gen.llm.backends import make_client
from data_gen.parallel_clean import clean_alone, fingerprint_key, resolve_duplicates
from data_gen.shards import (
  atomic_write_text,
  clear_temporaries,
  jsonl_text,
  read_jsonl,
  require_same_settings,
  shard_name,
  write_shard,
)
from data_gen.steps.cluster import cluster_step
from data_gen.steps.embed import embed_shard, embedding_path
from data_gen.steps.generate import check_settings, tuple_images
from data_gen.steps.sample import ImageTuple, read_round, sample_step, tuple_position
from data_gen.workdir import WorkDir
from mim_jax.llm.client import LLMConfig

REUSED = "shards_replied_before"


class EmbedShard(beam.DoFn):
  """A pair shard → its embedding shard, written as the local embed step writes it."""

  def __init__(self, work_root: str, clip_dir: str, min_score: float, batch_size: int):
    self.work_root, self.clip_dir, self.min_score, self.batch_size = work_root, clip_dir, min_score, batch_size
    self.scorer = None

  def process(self, shard: str):
    if self.scorer is None:
      # Imported on the worker: JAX starts and the model loads there, not where the pipeline is built.
      from mim_jax.infer.clip_scores import ClipScorer
      self.scorer = ClipScorer.from_pretrained(self.clip_dir, batch_size=self.batch_size, min_score=self.min_score)
    work = WorkDir(self.work_root)
    embed_shard(self.scorer, list(read_jsonl(Path(shard))), work, embedding_path(work, Path(shard)), self.min_score)
    yield shard


def _shard_path(work: WorkDir, round_index: int, index: int, directory: Path | None = None) -> Path:
  return (directory or work.conversations) / shard_name(index, ".jsonl", prefix=f"round-{round_index:03d}-shard")


def cluster_and_sample(_, work_root: str, *, round_index: int, num_clusters: int, min_cluster_size: int, seed: int,
                       count: int, tuples_per_shard: int) -> list[tuple[int, list[dict]]]:
  """Once every embedding shard is written: the local cluster and sample
  steps (each skipped when its output exists), then (shard index, tuples)
  for each of the round's conversation shards not yet written."""
  work = WorkDir(work_root)
  cluster_step(work, num_clusters=num_clusters, min_cluster_size=min_cluster_size, seed=seed)
  sample_step(work, count=count, round_index=round_index, seed=seed, min_cluster_size=min_cluster_size)
  shards: dict[int, list[dict]] = {}
  for image_tuple in read_round(work, round_index):
    shards.setdefault(tuple_position(image_tuple.id) // tuples_per_shard, []).append(image_tuple.to_json())
  return [(index, tuples) for index, tuples in sorted(shards.items())
          if not _shard_path(work, round_index, index).exists()]


class GenerateShard(beam.DoFn):
  """A conversation shard's tuples → one record each, cleaned alone (rule 4
  comes later), kept in W/beam/ so a rerun does not ask for them again."""

  def __init__(self, work_root: str, round_index: int, llm_config: dict, llm_workers: int, pool_path: str,
               seed: int):
    self.work_root, self.round_index = work_root, round_index
    self.llm_config, self.llm_workers, self.pool_path, self.seed = llm_config, llm_workers, pool_path, seed

  def setup(self):
    self.client = make_client(LLMConfig.from_mapping(self.llm_config).split_across(self.llm_workers))
    self.pool = load_pool(self.pool_path)

  def process(self, item: tuple[int, list], pairs: dict):
    index, batch = item
    work = WorkDir(self.work_root)
    kept = _shard_path(work, self.round_index, index, work.beam)
    if kept.exists():
      beam.metrics.Metrics.counter("generate", REUSED).inc()
      yield from read_jsonl(kept)
      return
    tuples = [ImageTuple.from_json(t) for t in batch]
    images = {t.id: tuple_images(t, pairs) for t in tuples}
    outcomes = asyncio.run(generate_conversations_async([(t.id, images[t.id]) for t in tuples], self.pool,
                                                        self.client, seed=self.seed))
    records = [clean_alone(outcome_record(outcomes[t.id], images[t.id])) for t in tuples]
    atomic_write_text(kept, jsonl_text(records))
    yield from records


def _rule_4_key(record: dict) -> str:
  # Records rule 4 never sees keep a key of their own, so they pass through alone.
  key = fingerprint_key(record)
  return "reply:" + key if key is not None else "id:" + record["id"]


def resolve_new(item) -> list[dict]:
  """A rule-4 group of (is new, record) → its new records resolved against
  every record of the group, stored ones included (those stay as written)."""
  _, tagged = item
  tagged = list(tagged)
  new_ids = {record["id"] for is_new, record in tagged if is_new}
  if not new_ids:
    return []
  return [r for r in resolve_duplicates([record for _, record in tagged]) if r["id"] in new_ids]


def write_generation_shard(item, work_root: str, round_index: int) -> int:
  index, records = item
  records = sorted(records, key=lambda record: record["id"])
  write_shard(_shard_path(WorkDir(work_root), round_index, index), jsonl_text(records), tally_records(records))
  return len(records)


def _shard_index(record: dict, tuples_per_shard: int) -> int:
  return tuple_position(record["id"]) // tuples_per_shard


def build(pipeline, work: WorkDir, *, round_index: int, clip_dir: str, min_score: float, clip_batch_size: int,
          num_clusters: int, min_cluster_size: int, num_conversations: int, seed: int, llm_config: dict,
          llm_workers: int, pool_path: str, tuples_per_shard: int) -> dict:
  """Adds the round's steps to `pipeline`; returns the notes of what earlier runs finished."""
  root = str(work.root)
  shards = work.pair_shards()
  if not shards:
    raise FileNotFoundError(f"{work.pairs} holds no pair shard; run `python -m data_gen ingest --work {root}` first")
  require_same_settings(work.embeddings / "settings.json", {"min_score": min_score})
  check_settings(work, round_index, shard_size=tuples_per_shard, seed=seed)
  for directory in (work.embeddings, work.conversations, work.beam):
    clear_temporaries(directory)
  to_embed = [str(shard) for shard in shards if not embedding_path(work, shard).exists()]
  # Rule 4 sees every reply before it: earlier rounds' and this round's finished shards.
  stored = [str(path) for path in conversation_shards(work) if int(path.name.split("-")[1]) <= round_index]
  pairs = (pipeline | "PairShards" >> beam.Create([str(shard) for shard in shards])
           | "ReadPairs" >> beam.FlatMap(lambda s: read_jsonl(Path(s)))
           | "ById" >> beam.Map(lambda pair: (pair["id"], pair)))
  pending = (pipeline | "EmbedShards" >> beam.Create(to_embed)
             | "Embed" >> beam.ParDo(EmbedShard(root, clip_dir, min_score, clip_batch_size))
             | "AllEmbedded" >> beam.combiners.Count.Globally()
             | "ClusterAndSample" >> beam.FlatMap(cluster_and_sample, root, round_index=round_index,
                                                  num_clusters=num_clusters, min_cluster_size=min_cluster_size,
                                                  seed=seed, count=num_conversations,
                                                  tuples_per_shard=tuples_per_shard))
  new = (pending | "Spread" >> beam.Reshuffle()
         | "Generate" >> beam.ParDo(GenerateShard(root, round_index, llm_config, llm_workers, pool_path, seed),
                                    beam.pvalue.AsDict(pairs))
         | "NewByReply" >> beam.Map(lambda r: (_rule_4_key(r), (True, r))))
  seen = (pipeline | "StoredShards" >> beam.Create(stored) | "ReadStored" >> beam.FlatMap(lambda s: read_jsonl(Path(s)))
          | "Fingerprinted" >> beam.Filter(lambda r: fingerprint_key(r) is not None)
          | "StoredByReply" >> beam.Map(lambda r: (_rule_4_key(r), (False, r))))
  cleaned = ((new, seen) | "AllReplies" >> beam.Flatten() | "SameReply" >> beam.GroupByKey()
             | "Rule4" >> beam.FlatMap(resolve_new))
  _ = (cleaned | "ByShard" >> beam.Map(lambda r: (_shard_index(r, tuples_per_shard), r))
       | "ShardRecords" >> beam.GroupByKey()
       | "Write" >> beam.Map(write_generation_shard, root, round_index))
  return {"embed shards done before this run": len(shards) - len(to_embed),
          "generate shards done before this run": len(conversation_shards(work, round_index))}


def run(work: WorkDir, beam_args: list[str], **settings) -> dict:
  """Runs the pipeline to the end; returns build's notes and how many
  shards' replies a killed run had kept."""
  pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
  notes = build(pipeline, work, **settings)
  result = pipeline.run()
  result.wait_until_finish()
  reused = result.metrics().query(MetricsFilter().with_name(REUSED))["counters"]
  notes["generate shards replied before this run"] = sum(counter.committed or 0 for counter in reused)
  # Every shard of the round is written: the replies kept for a rerun are done with.
  for kept in work.beam.glob(f"round-{settings['round_index']:03d}-shard-*.jsonl"):
    kept.unlink()
  return notes
