"""embed → cluster/sample → generate → clean → write as an Apache Beam
pipeline: the same code on the DirectRunner, Dataflow, Flink or Spark.

    python -m data_gen beam --work W [the embed/cluster/sample/generate flags] \
        --beam-arg=--runner=DataflowRunner --beam-arg=--project=… --llm-workers 50

Input: W's ingested pairs (run `ingest` first; images must be readable by
every worker, e.g. W on GCS through a fuse mount). Output: W's clusters.json,
samples/round-000.jsonl and conversations/ shards, the same files a local run
of the same steps writes; run `export` and `stats` after it.

Parallelism: every worker holds the pair table (id → caption, url, image
name) as a side input, about 200 bytes a pair; one pair shard per embed element (as local embed batches them,
so the embeddings — and everything after — equal a local run's); one global
step clusters and samples (it needs every embedding); generation runs on
reshuffled batches of tuples; cleaning is per reply plus a group-by on the
rule-4 fingerprint (parallel_clean.py); shards are written by key.

Rate limit: every generate worker gets `LLMConfig.split_across(llm_workers)`
(see mim_jax/llm/rate_limit.py): set --llm-workers to the runner's maximum worker count
(Dataflow: max_num_workers × threads per worker) so all of them together stay
under the quota. On one machine, `--llm rate_state_file=PATH` shares one
bucket among processes exactly.

Rerunning recomputes everything (Beam retries failed work itself); every file
is written atomically, so a rerun never leaves a half-written shard.

apache-beam is optional: 2.77 pins pillow<13, protobuf<7 and pyarrow<26, which
this project's pins exceed, so it is not in requirements.txt; install
requirements-beam.txt into a directory beside the venv and put that on
PYTHONPATH (see that file).
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

try:
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions
except ImportError as error:
  raise ImportError(
      "data_gen.steps.beam needs apache-beam, which is not installed: its releases pin pillow<13 and "
      "protobuf<7, older than this project's pins, so it goes beside the venv: `.venv/bin/pip install --no-deps "
      "--target .beam_site -r requirements-beam.txt`, then run with PYTHONPATH=.beam_site. The local steps "
      "(`python -m data_gen run`) need none of it.") from error

from data_gen.fewshot import load_pool
from data_gen.generated import outcome_record, tally_records
from data_gen.generation import generate_conversations_async
from data_gen.llm.backends import make_client
from data_gen.parallel_clean import clean_alone, fingerprint_key, resolve_duplicates
from data_gen.shards import atomic_write_text, jsonl_text, read_jsonl, shard_name, write_shard
from data_gen.steps.cluster import cluster_embeddings, write_clusters
from data_gen.steps.generate import check_settings, tuple_images
from data_gen.steps.sample import ImageTuple, round_path, sample_tuples, tuple_position
from data_gen.workdir import WorkDir
from mim_jax.llm.client import LLMConfig

ROUND = 0


class EmbedShard(beam.DoFn):
  """A pair shard → (id, embedding) for each pair that passes the score filter."""

  def __init__(self, work_root: str, clip_dir: str, min_score: float, batch_size: int):
    self.work_root, self.clip_dir, self.min_score, self.batch_size = work_root, clip_dir, min_score, batch_size

  def setup(self):
    # Imported on the worker: JAX starts and the model loads there, not where the pipeline is built.
    from mim_jax.infer.clip_scores import ClipScorer
    self.scorer = ClipScorer.from_pretrained(self.clip_dir, batch_size=self.batch_size, min_score=self.min_score)

  def process(self, shard: str):
    pairs = list(read_jsonl(Path(shard)))
    images = WorkDir(self.work_root).images
    scored = self.scorer.score_pairs([(images / pair["image"], pair["caption"]) for pair in pairs])
    for pair, score, embedding in zip(pairs, scored.scores, scored.image_embeds):
      if score >= self.min_score:  # NaN (a bad record) compares False
        yield pair["id"], embedding
      else:
        beam.metrics.Metrics.counter("embed", "dropped").inc()


def cluster_and_sample(embedded: list, work_root: str, *, num_clusters: int, min_cluster_size: int, seed: int,
                       count: int) -> list[dict]:
  """Every (id, embedding) → kmeans.npz, clusters.json and round 0's tuples, as the local
  cluster and sample steps compute them (pair order, the same seed)."""
  work = WorkDir(work_root)
  embedded = sorted(embedded, key=lambda item: item[0])
  ids = [pair_id for pair_id, _ in embedded]
  clusters, _, result = cluster_embeddings(ids, np.stack([e for _, e in embedded]), num_clusters=num_clusters,
                                           min_cluster_size=min_cluster_size, seed=seed)
  write_clusters(work, ids, clusters, result)
  tuples, _ = sample_tuples(clusters["clusters"], count, used=set(), round_index=ROUND, seed=seed,
                            min_cluster_size=min_cluster_size)
  atomic_write_text(round_path(work, ROUND), jsonl_text(t.to_json() for t in tuples))
  return [t.to_json() for t in tuples]


class GenerateBatch(beam.DoFn):
  """A batch of tuples → one record each, cleaned alone (rule 4 comes later)."""

  def __init__(self, llm_config: dict, llm_workers: int, pool_path: str, seed: int):
    self.llm_config, self.llm_workers, self.pool_path, self.seed = llm_config, llm_workers, pool_path, seed

  def setup(self):
    self.client = make_client(LLMConfig.from_mapping(self.llm_config).split_across(self.llm_workers))
    self.pool = load_pool(self.pool_path)

  def process(self, batch: list, pairs: dict):
    tuples = [ImageTuple.from_json(t) for t in batch]
    images = {t.id: tuple_images(t, pairs) for t in tuples}
    outcomes = asyncio.run(generate_conversations_async([(t.id, images[t.id]) for t in tuples], self.pool,
                                                        self.client, seed=self.seed))
    for t in tuples:
      yield clean_alone(outcome_record(outcomes[t.id], images[t.id]))


def _rule_4_key(record: dict) -> str:
  # Records rule 4 never sees keep a key of their own, so they pass through alone.
  key = fingerprint_key(record)
  return "reply:" + key if key is not None else "id:" + record["id"]


def write_generation_shard(item, work_root: str) -> int:
  index, records = item
  records = sorted(records, key=lambda record: record["id"])
  shard = WorkDir(work_root).conversations / shard_name(index, ".jsonl", prefix=f"round-{ROUND:03d}-shard")
  write_shard(shard, jsonl_text(records), tally_records(records))
  return len(records)


def _shard_index(record: dict, tuples_per_shard: int) -> int:
  return tuple_position(record["id"]) // tuples_per_shard


def build(pipeline, work: WorkDir, *, clip_dir: str, min_score: float, clip_batch_size: int, num_clusters: int,
          min_cluster_size: int, num_conversations: int, seed: int, llm_config: dict, llm_workers: int,
          pool_path: str, tuples_per_shard: int) -> None:
  root = str(work.root)
  shards = [str(path) for path in work.pair_shards()]
  if not shards:
    raise FileNotFoundError(f"{work.pairs} holds no pair shard; run `python -m data_gen ingest --work {root}` first")
  check_settings(work, ROUND, shard_size=tuples_per_shard, seed=seed)
  pairs = (pipeline | "PairShards" >> beam.Create(shards) | "ReadPairs" >> beam.FlatMap(lambda s: read_jsonl(Path(s)))
           | "ById" >> beam.Map(lambda pair: (pair["id"], pair)))
  tuples = (pipeline | "EmbedShards" >> beam.Create(shards)
            | "Embed" >> beam.ParDo(EmbedShard(root, clip_dir, min_score, clip_batch_size))
            | "AllEmbeddings" >> beam.combiners.ToList()
            | "ClusterAndSample" >> beam.FlatMap(cluster_and_sample, root, num_clusters=num_clusters,
                                                 min_cluster_size=min_cluster_size, seed=seed,
                                                 count=num_conversations))
  records = (tuples | "Spread" >> beam.Reshuffle()
             | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=tuples_per_shard)
             | "Generate" >> beam.ParDo(GenerateBatch(llm_config, llm_workers, pool_path, seed),
                                        beam.pvalue.AsDict(pairs)))
  cleaned = (records | "ByReply" >> beam.Map(lambda r: (_rule_4_key(r), r)) | "SameReply" >> beam.GroupByKey()
             | "Rule4" >> beam.FlatMap(lambda item: resolve_duplicates(list(item[1]))))
  _ = (cleaned | "ByShard" >> beam.Map(lambda r: (_shard_index(r, tuples_per_shard), r))
       | "ShardRecords" >> beam.GroupByKey()
       | "Write" >> beam.Map(write_generation_shard, root))


def run(work: WorkDir, beam_args: list[str], **settings) -> None:
  with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
    build(pipeline, work, **settings)
