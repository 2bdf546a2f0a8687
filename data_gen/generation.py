"""Image tuples → LLM → cleaned conversations, one outcome per tuple.

    generate_conversations(tasks, pool, client, *, seed, cleaner=None, on_outcome=None)
        -> dict[str, GenerationOutcome]
    await generate_conversations_async(...)   # the same, inside a running event loop

`tasks`: an iterable of (id, images) with stable, unique ids and images a
sequence of (file, caption, url) in prompt order (<img0> = images[0]).
Every id gets exactly one GenerationOutcome whose `result` is a
`Conversation` (named by the id) or a `Rejection` (an `llm_…` reason from
mim_jax/llm/client.py, or a cleaning rule from clean.RULES). `on_outcome` is called once per
outcome, in input order, as soon as it and all before it are final: write
it there and show progress.

Determinism: each tuple's in-context examples come from an rng seeded by
(seed, id), never by completion order, and replies are cleaned in input
order, so rule 4 (duplicate responses) keeps the first duplicate in input
order. With a deterministic client (the template backend) a shard's output
is reproducible. Call it per shard (Beam): pass one `Cleaner` to all shards
of a process to share rule 4's memory, and dedupe across processes with
clean.response_fingerprint.

At most client.config.concurrency requests are in flight; each prompt is
built just before its request, so a shard is never held as prompts in memory.
A call keeps min(concurrency, tuples left) requests busy and ends with its
slowest request, so give each call many times more tuples than concurrency
(per-call tail latency is otherwise paid once per shard).
"""
from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Callable, Iterable, Sequence

from data_gen.clean import Cleaner
from data_gen.fewshot import Pool, select_examples
from data_gen.outcome import GenerationOutcome, ImageRef, Rejection
from data_gen.prompt import build_prompt
from mim_jax.llm.client import Completion, LLMClient, LLMRequest

Task = tuple[str, Sequence[ImageRef]]


def generate_conversations(tasks: Iterable[Task], pool: Pool, client: LLMClient, *, seed: int,
                           cleaner: Cleaner | None = None,
                           on_outcome: Callable[[GenerationOutcome], None] | None = None,
                           ) -> dict[str, GenerationOutcome]:
  return asyncio.run(generate_conversations_async(tasks, pool, client, seed=seed, cleaner=cleaner,
                                                  on_outcome=on_outcome))


def request_for(task_id: str, images: Sequence[ImageRef], pool: Pool, seed: int) -> tuple[LLMRequest, tuple[str, ...]]:
  """The request for one tuple and the ids of the examples its prompt uses."""
  captions = tuple(caption for _, caption, _ in images)
  examples = select_examples(pool, random.Random(f"{seed}:{task_id}"))
  return LLMRequest(task_id, build_prompt(captions, examples), captions), tuple(e.id for e in examples)


async def generate_conversations_async(tasks: Iterable[Task], pool: Pool, client: LLMClient, *, seed: int,
                                       cleaner: Cleaner | None = None,
                                       on_outcome: Callable[[GenerationOutcome], None] | None = None,
                                       ) -> dict[str, GenerationOutcome]:
  tasks = list(tasks)
  repeated = [task_id for task_id, count in Counter(task_id for task_id, _ in tasks).items() if count > 1]
  if repeated:
    raise ValueError(f"task ids must be unique within a call; {len(repeated)} repeat, e.g. {repeated[0]!r}")
  pool.check_selectable()
  cleaner = cleaner if cleaner is not None else Cleaner()
  pending = iter(enumerate(tasks))
  replies: dict[int, tuple] = {}
  outcomes: dict[str, GenerationOutcome] = {}

  def finish_in_order():
    # Outcomes leave in input order, each as soon as all before it are done.
    while len(outcomes) in replies:
      outcome = _outcome(*replies.pop(len(outcomes)), cleaner)
      outcomes[outcome.id] = outcome
      if on_outcome is not None:
        on_outcome(outcome)

  async def worker():
    # Workers share one iterator; next() never awaits, so no tuple is taken twice.
    for position, (task_id, images) in pending:
      request, example_ids = request_for(task_id, images, pool, seed)
      replies[position] = (task_id, images, example_ids, await client.complete(request))
      finish_in_order()

  async with client:
    async with asyncio.TaskGroup() as workers:  # a bug in one worker cancels the others
      for _ in range(min(client.config.concurrency, len(tasks))):
        workers.create_task(worker())
  return outcomes


def _outcome(task_id: str, images: Sequence[ImageRef], example_ids: tuple[str, ...], reply,
             cleaner: Cleaner) -> GenerationOutcome:
  if isinstance(reply, Completion):
    result = cleaner(reply.text, images, name=task_id)
    return GenerationOutcome(task_id, result, reply.text, example_ids, reply.finish_reason, reply.attempts)
  cleaner.counts[reply.reason] += 1
  return GenerationOutcome(task_id, Rejection(reply.reason, reply.detail), "", example_ids, "", reply.attempts)
