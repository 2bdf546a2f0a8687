"""The command-line steps: each reads its flags from an argparse namespace,
runs one module's step function and returns (tally, notes) for the summary
table. Options are declared once in OPTIONS and named by the steps that use
them, so `run` — every step in order — accepts the union without clashes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Callable

from data_gen.steps.sample import SEED
from data_gen.workdir import WorkDir
from mim_jax.data.problems import ProblemCounts


def _llm_setting(text: str) -> tuple[str, object]:
  key, sep, value = text.partition("=")
  if not sep:
    raise argparse.ArgumentTypeError(f"--llm {text!r}: expected KEY=VALUE, e.g. --llm backend=openai")
  try:
    return key, json.loads(value)
  except json.JSONDecodeError:
    return key, value  # a bare string such as a model name


OPTIONS = {
    "--work": dict(type=Path, required=True, help="the run directory (created if missing)"),
    "--seed": dict(type=int, default=SEED, help="seed of k-means, sampling and example selection (spec: 10086)"),
    # ingest
    "--source": dict(default="synthetic:64", help="KIND:ARGUMENT, KIND one of tsv, folder, wds, synthetic "
                                                  "(see data_gen/sources/open_source.py); default: 64 synthetic pairs"),
    "--tsv-columns": dict(default="caption,url", help="TSV column order: caption,url (CC3M) or url,caption (CC12M)"),
    "--pairs-per-shard": dict(type=int, default=1000),
    "--download-workers": dict(type=int, default=16, help="concurrent downloads in all"),
    "--per-host": dict(type=int, default=4, help="concurrent downloads from one host"),
    "--timeout": dict(type=float, default=10.0, help="seconds per HTTP attempt"),
    "--retries": dict(type=int, default=2, help="extra attempts after a timeout, connection error, 429 or 5xx"),
    # embed
    "--clip": dict(default="tiny", help="a HF CLIPModel directory (e.g. openai/clip-vit-large-patch14 saved "
                                        "locally), or 'tiny': a random tiny CLIP made in WORK/tiny_clip for smoke "
                                        "runs, whose scores mean nothing, so the score filter is off"),
    "--min-score": dict(type=float, default=30.0, help="keep pairs with 100 × cosine at least this (spec: 30)"),
    "--clip-batch-size": dict(type=int, default=64),
    # cluster
    "--num-clusters": dict(type=int, default=4096, help="k-means k (spec: 4096); lowered to fit small runs"),
    "--min-cluster-size": dict(type=int, default=32, help="clusters smaller than this are never sampled (spec: 32)"),
    # sample
    "--num-conversations": dict(type=int, default=100, help="image tuples to draw in this round"),
    "--round": dict(type=int, default=0, help="sampling/generation round; later rounds never reuse a tuple"),
    # generate
    "--llm-config": dict(type=Path, help="JSON file of mim_jax.llm.client.LLMConfig fields"),
    "--llm": dict(type=_llm_setting, action="append", default=[], metavar="KEY=VALUE",
                  help="an LLMConfig field, over --llm-config (default backend: template, offline)"),
    "--fewshot-pool": dict(type=Path, help="rated example pool JSON (default: the bundled seed pool)"),
    "--tuples-per-shard": dict(type=int, default=64),
    # export
    "--no-tfds": dict(action="store_true", help="write the JSON files only"),
    # tfds (released data)
    "--json": dict(type=Path, help="a released-format JSON file (e.g. TextBind's train data)"),
    "--images": dict(type=Path, help="the folder holding every image the JSON names"),
    # beam
    "--beam-arg": dict(action="append", default=[], metavar="--OPTION=VALUE",
                       help="a Beam pipeline option, e.g. --beam-arg=--runner=DataflowRunner (default: DirectRunner)"),
    "--llm-workers": dict(type=int, default=1, help="how many generate workers share the LLM quota (Beam)"),
    # annotate
    "--csv": dict(type=Path, help="annotation CSV (default: WORK/annotation/round-NNN.csv)"),
    "--out-pool": dict(type=Path, help="where annotate-import writes the next pool version"),
}


@dataclasses.dataclass(frozen=True)
class Step:
  name: str
  help: str
  options: tuple[str, ...]
  run: Callable[[argparse.Namespace], tuple[ProblemCounts, dict]]


def ingest(args) -> tuple[ProblemCounts, dict]:
  from data_gen.sources.download import Fetcher, FetchOptions
  from data_gen.sources.open_source import open_source
  from data_gen.steps.ingest import ingest as ingest_source
  options = FetchOptions(timeout_s=args.timeout, retries=args.retries, workers=args.download_workers,
                         per_host=args.per_host)
  source = open_source(args.source, tsv_columns=tuple(args.tsv_columns.split(",")), seed=args.seed)
  return ingest_source(source, WorkDir(args.work), fetcher=Fetcher(options), shard_size=args.pairs_per_shard,
                       source=f"{args.source} columns={args.tsv_columns} seed={args.seed}")


def _clip(args, work: WorkDir) -> tuple[Path, float]:
  """The CLIP directory and min score: a random tiny CLIP scores nothing
  meaningful, so with it the filter is off."""
  import math

  from data_gen.tiny_clip import save_tiny_clip
  if args.clip == "tiny":
    directory = work.root / "tiny_clip"
    if not (directory / "config.json").exists():
      save_tiny_clip(directory)
    return directory, -math.inf
  directory = Path(args.clip)
  if not (directory / "config.json").is_file():
    raise FileNotFoundError(f"--clip {directory} has no config.json; pass a HF CLIPModel directory or 'tiny'")
  return directory, args.min_score


def embed(args) -> tuple[ProblemCounts, dict]:
  work = WorkDir(args.work)
  directory, min_score = _clip(args, work)  # a bad --clip fails before JAX starts
  from data_gen.steps.embed import embed_step
  from mim_jax.infer.clip_scores import ClipScorer
  return embed_step(work, lambda: ClipScorer.from_pretrained(directory, batch_size=args.clip_batch_size,
                                                             min_score=min_score), min_score=min_score)


def cluster(args) -> tuple[ProblemCounts, dict]:
  from data_gen.steps.cluster import cluster_step
  return cluster_step(WorkDir(args.work), num_clusters=args.num_clusters, min_cluster_size=args.min_cluster_size,
                      seed=args.seed)


def released_tfds(args) -> tuple[ProblemCounts, dict]:
  from data_gen.steps.tfds import released_tfds as write
  if args.json is None or args.images is None:
    raise ValueError("tfds needs --json FILE (released format) and --images DIR (the files it names)")
  return write(args.json, args.images, WorkDir(args.work).root / "tfds")


def beam(args) -> tuple[ProblemCounts, dict]:
  from data_gen.generated import conversation_shards, tally_records
  from data_gen.shards import read_jsonl
  from data_gen.steps import beam as beam_pipeline
  work = WorkDir(args.work)
  clip_dir, min_score = _clip(args, work)
  notes = beam_pipeline.run(
      work, args.beam_arg, round_index=args.round, clip_dir=str(clip_dir), min_score=min_score,
      clip_batch_size=args.clip_batch_size, num_clusters=args.num_clusters, min_cluster_size=args.min_cluster_size,
      num_conversations=args.num_conversations, seed=args.seed,
      llm_config=dataclasses.asdict(llm_config(args)), llm_workers=args.llm_workers,
      pool_path=str(args.fewshot_pool or _seed_pool()), tuples_per_shard=args.tuples_per_shard)
  shards = conversation_shards(work, args.round)
  return tally_records(r for shard in shards for r in read_jsonl(shard)), {**notes, "shards written": len(shards)}


def make_tiny_clip(args) -> tuple[ProblemCounts, dict]:
  from data_gen.tiny_clip import save_tiny_clip
  return ProblemCounts(kept=1), {f"random tiny CLIP saved to {save_tiny_clip(args.work / 'tiny_clip')}": 1}


def sample(args) -> tuple[ProblemCounts, dict]:
  from data_gen.steps.sample import sample_step
  return sample_step(WorkDir(args.work), count=args.num_conversations, round_index=args.round, seed=args.seed)


def llm_config(args):
  from mim_jax.llm.client import LLMConfig
  values = {"backend": "template"}
  if args.llm_config is not None:
    values.update(json.loads(args.llm_config.read_text(encoding="utf-8")))
  values.update(dict(args.llm))
  return LLMConfig.from_mapping(values)


def _seed_pool() -> Path:
  from data_gen.fewshot import SEED_POOL
  return SEED_POOL


def load_pool(args):
  from data_gen.fewshot import load_pool as load
  return load(args.fewshot_pool or _seed_pool())


def generate(args) -> tuple[ProblemCounts, dict]:
  from data_gen.llm.backends import make_client
  from data_gen.steps.generate import generate_step
  return generate_step(WorkDir(args.work), make_client(llm_config(args)), load_pool(args), round_index=args.round,
                       seed=args.seed, shard_size=args.tuples_per_shard)


def export(args) -> tuple[ProblemCounts, dict]:
  from data_gen.steps.export import export_step
  return export_step(WorkDir(args.work), tfds=not args.no_tfds)


def stats(args) -> tuple[ProblemCounts, dict]:
  from data_gen.shards import atomic_write_json
  from data_gen.steps.stats import dataset_stats
  from mim_jax.data.conversation import read_conversations
  from mim_jax.data.problems import ProblemCounts
  work = WorkDir(args.work)
  counts = ProblemCounts()
  path = args.json or work.require(work.export / "conversations.json", "export")
  values = dataset_stats(list(read_conversations(path, counts)))
  atomic_write_json(work.stats, values)
  return counts, {name: round(v, 3) if isinstance(v, float) else v for name, v in values.items()}


def _csv_path(args) -> Path:
  return args.csv or WorkDir(args.work).root / "annotation" / f"round-{args.round:03d}.csv"


def annotate_export(args) -> tuple[ProblemCounts, dict]:
  from data_gen.generated import conversation_shards, record_conversation
  from data_gen.shards import read_jsonl
  from data_gen.steps.annotate import export_for_rating
  work = WorkDir(args.work)
  shards = conversation_shards(work, args.round)
  if not shards:
    raise FileNotFoundError(f"round {args.round} has no generated shard in {work.conversations}; run "
                            f"`python -m data_gen generate --work {work.root} --round {args.round}` first")
  items = [(r["id"], record_conversation(r)) for shard in shards for r in read_jsonl(shard) if r["kept"]]
  path = _csv_path(args)
  path.parent.mkdir(parents=True, exist_ok=True)
  return ProblemCounts(kept=export_for_rating(items, path)), {f"rows written to {path}": len(items)}


def annotate_import(args) -> tuple[ProblemCounts, dict]:
  from data_gen.fewshot import save_pool
  from data_gen.steps.annotate import import_ratings
  if args.out_pool is None:
    raise ValueError("annotate-import needs --out-pool PATH: the new pool version is written to a new file")
  report = import_ratings(_csv_path(args), load_pool(args))
  save_pool(report.pool, args.out_pool)
  tally = ProblemCounts(kept=sum(report.added.values()), skipped=report.skipped,
                        first_message=report.first_message)
  return tally, {f"pool v{report.pool.version} written to {args.out_pool}": len(report.pool.examples)}


STEPS = (
    Step("ingest", "source → pair shards and 512×512 padded PNGs",
         ("--work", "--seed", "--source", "--tsv-columns", "--pairs-per-shard", "--download-workers", "--per-host",
          "--timeout", "--retries"), ingest),
    Step("embed", "CLIP score filter + image embeddings",
         ("--work", "--clip", "--min-score", "--clip-batch-size"), embed),
    Step("cluster", "k-means over the embeddings; clusters big enough to sample from",
         ("--work", "--seed", "--num-clusters", "--min-cluster-size"), cluster),
    Step("sample", "clusters → a round of 2–3 image tuples", ("--work", "--seed", "--num-conversations", "--round"),
         sample),
    Step("generate", "image tuples → LLM → cleaned conversations (resumable)",
         ("--work", "--seed", "--round", "--llm-config", "--llm", "--fewshot-pool", "--tuples-per-shard"), generate),
    Step("export", "conversations → released JSON splits + TFDS", ("--work", "--no-tfds"), export),
    Step("stats", "turns, images by role, words, diversity (of the export, or of --json FILE)",
         ("--work", "--json"), stats),
)
TOOLS = (
    Step("tfds", "a released-format JSON + image folder (e.g. TextBind's own data) → TFDS in WORK/tfds",
         ("--work", "--json", "--images"), released_tfds),
    Step("beam", "embed → cluster/sample → generate → clean → write as an Apache Beam pipeline (one --round; "
                 "reruns skip finished shards)",
         ("--work", "--seed", "--round", "--clip", "--min-score", "--clip-batch-size", "--num-clusters",
          "--min-cluster-size", "--num-conversations", "--llm-config", "--llm", "--fewshot-pool", "--tuples-per-shard",
          "--beam-arg", "--llm-workers"), beam),
    Step("make-tiny-clip", "save a random tiny CLIP to WORK/tiny_clip (what embed --clip tiny uses)", ("--work",),
         make_tiny_clip),
    Step("annotate-export", "a round's kept conversations → rating CSV", ("--work", "--round", "--csv"),
         annotate_export),
    Step("annotate-import", "a filled rating CSV → the next few-shot pool version",
         ("--work", "--round", "--csv", "--fewshot-pool", "--out-pool"), annotate_import),
)
