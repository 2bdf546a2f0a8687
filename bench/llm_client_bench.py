"""LLM generation throughput against a fake OpenAI-compatible endpoint that
answers every request after a fixed latency, vs the ideal concurrency ÷ latency.

  python bench/llm_client_bench.py                 # latency 1 s, concurrency 8/32/128, 10 rounds each (~40 s)
  python bench/llm_client_bench.py --rounds 3      # quicker, noisier

Measures generate_conversations end to end, as the pipeline runs it: few-shot
selection, prompt building, the HTTP request (aiohttp), JSON parsing and the
cleaning rules, for concurrency × rounds image tuples. The endpoint runs in a
separate process, so "CPU / conversation" is this process's CPU (user + system)
only. Its replies are dialogues over the prompt's captions that pass cleaning,
the size of a real reply. Targets: ≥ 95 % of ideal, ≤ 2 ms CPU / conversation.

Two more columns tell where a shortfall comes from: "mean request latency"
is what the client saw per request (the endpoint's latency plus queueing in
either process, which grows when the machine's cores are busy), and "slots
busy" is the share of concurrency × wall during which a request was in
flight (100 % = the pipeline never left a slot idle between requests).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_gen.dialogue import PAIRED_TAG  # noqa: E402
from data_gen.llm.template import compose_dialogue  # noqa: E402
from data_gen.prompt import IMAGES_HEADER  # noqa: E402


def serve(latency_s: float) -> None:
  """The fake endpoint: prints its port, then answers until killed."""
  import json

  from aiohttp import web

  async def chat(request):
    body = await request.json()
    prompt = body["messages"][0]["content"]
    listed = prompt.split(IMAGES_HEADER + "\n", 1)[1].split("\n\n", 1)[0]
    captions = [caption.strip() for _, caption in PAIRED_TAG.findall(listed)]
    text = compose_dialogue(captions, random.Random(captions[0]))
    await asyncio.sleep(latency_s)
    return web.json_response({"choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": text}}],
                              "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4}},
                             dumps=json.dumps)

  async def main():
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()

  asyncio.run(main())


def bench(port: int, concurrency: int, rounds: int, latency_s: float) -> dict:
  from bench.common import cpu_seconds
  from data_gen.fewshot import load_pool
  from data_gen.generation import generate_conversations
  from data_gen.llm.backends import make_client
  from mim_jax.llm.client import LLMConfig

  count = concurrency * rounds
  tuples = [(f"c{concurrency}-{i}", [(f"{i}-{j}.png", f"photo {j} of tuple {i}: a street market in the rain "
                                                       f"with colourful umbrellas", f"http://example.com/{i}/{j}")
                                      for j in range(2 + i % 2)]) for i in range(count)]
  client = make_client(LLMConfig(base_url=f"http://127.0.0.1:{port}/v1", model="fake", api_key_env="",
                                 concurrency=concurrency))
  pool = load_pool()
  latencies = []
  complete = client.complete

  async def timed_complete(request):
    start = time.perf_counter()
    reply = await complete(request)
    latencies.append(time.perf_counter() - start)
    return reply

  client.complete = timed_complete
  cpu0, wall0 = cpu_seconds(), time.perf_counter()
  outcomes = generate_conversations(tuples, pool, client, seed=0)
  wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
  kept = sum(o.kept for o in outcomes.values())
  if kept != count:
    raise RuntimeError(f"only {kept} of {count} conversations were kept; the benchmark's replies should all pass")
  rate, ideal = count / wall, concurrency / latency_s
  return dict(concurrency=concurrency, count=count, wall=wall, rate=rate, ideal=ideal, cpu_ms=cpu / count * 1e3,
              latency=sum(latencies) / count, busy=sum(latencies) / (concurrency * wall))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--latency", type=float, default=1.0, help="seconds the endpoint waits before answering")
  parser.add_argument("--rounds", type=int, default=10, help="requests per concurrency slot")
  parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 128])
  parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.serve:
    serve(args.latency)
    return
  from bench.common import row
  server = subprocess.Popen([sys.executable, __file__, "--serve", "--latency", str(args.latency)],
                            stdout=subprocess.PIPE, text=True)
  try:
    port = int(server.stdout.readline())
    results = [bench(port, c, args.rounds, args.latency) for c in args.concurrency]
  finally:
    server.terminate()
    server.wait()
  print(f"\nfake endpoint latency {args.latency:g} s, {args.rounds} rounds per slot, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}")
  print(row("concurrency", "conversations", "wall", "conversations/s", "ideal (concurrency ÷ latency)",
            "of ideal", "CPU / conversation", "mean request latency", "slots busy"))
  print(row(*["---"] * 9))
  for r in results:
    print(row(r["concurrency"], r["count"], f"{r['wall']:.2f} s", f"{r['rate']:.1f}", f"{r['ideal']:.1f}",
              f"{r['rate'] / r['ideal']:.1%}", f"{r['cpu_ms']:.2f} ms", f"{r['latency']:.3f} s", f"{r['busy']:.1%}"))


if __name__ == "__main__":
  main()
