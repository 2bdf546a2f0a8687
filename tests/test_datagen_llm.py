"""The OpenAI-compatible client against a real local HTTP server that
injects faults; the API key never leaks; the rate limiter's buckets."""
import asyncio
import json
import logging
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_gen.fewshot import load_pool
from data_gen.generation import generate_conversations
from data_gen.llm.backends import make_client
from data_gen.llm.template import compose_dialogue
from data_gen.outcome import Rejection
from mim_jax.data.conversation import Conversation, write_conversations
from mim_jax.llm.client import LLMConfig, LLMRequest
from mim_jax.llm.openai_client import _retry_after_s
from mim_jax.llm.rate_limit import RateLimiter
from tests.datagen_fake_llm import FakeChatEndpoint, prompt_captions

KEY_ENV = "DATAGEN_TEST_API_KEY"
KEY = "sk-datagen-test-7f3a9c51e2"
MAX_ATTEMPTS = 4
# Request number mod 20 → fault; 9 of 20 requests (45 %) misbehave.
FAULT_OF = {0: "429", 1: "429", 2: "500", 3: "500", 4: "timeout", 5: "bad_json", 6: "cut", 7: "length", 8: "503"}
ATTEMPTS_OF = {"429": 2, "500": 3, "timeout": 2, "bad_json": 2, "cut": 2, "length": 1, "503": MAX_ATTEMPTS, None: 1}
REJECTION_OF = {"length": "llm_cut_by_max_tokens", "503": "llm_retries_exhausted"}


def flaky(key, attempt):
  number = int(key.removeprefix("req-"))
  fault = FAULT_OF.get(number % 20)
  if fault == "bad_json" and number % 40 >= 20:
    fault = "no_choices"  # valid JSON, wrong shape
  if fault == "500":
    return fault if attempt <= 2 else None
  if fault in ("length", "503"):
    return fault
  return fault if attempt == 1 else None


def config(url, **overrides):
  values = dict(base_url=url, model="fake-model", api_key_env=KEY_ENV, concurrency=16, max_attempts=MAX_ATTEMPTS,
                backoff_base_s=0.001, backoff_max_s=0.005, request_timeout_s=2.0)
  return LLMConfig(**{**values, **overrides})


def tasks(count):
  return [(f"t{i}", [(f"{i}a.png", f"a photo req-{i} of a dog on a beach", f"http://x/{i}a"),
                     (f"{i}b.png", f"the sun setting over the sea, number {i}", f"http://x/{i}b")])
          for i in range(count)]


def dialogue_reply(prompt):
  return compose_dialogue(prompt_captions(prompt), random.Random(prompt_captions(prompt)[0]))


def test_every_request_ends_written_or_rejected_exactly_once(monkeypatch):
  monkeypatch.setenv(KEY_ENV, KEY)
  endpoint = FakeChatEndpoint(fault=flaky, reply=dialogue_reply, hang_s=4.0)
  seen = []
  with endpoint.serving() as url:
    outcomes = generate_conversations(tasks(200), load_pool(), make_client(config(url)), seed=3,
                                      on_outcome=lambda outcome: seen.append(outcome.id))
  assert seen == [f"t{i}" for i in range(200)]  # each once, in input order
  assert list(outcomes) == seen
  for i in range(200):
    fault = FAULT_OF.get(i % 20)
    outcome = outcomes[f"t{i}"]
    assert outcome.attempts == ATTEMPTS_OF[fault] == endpoint.hits[f"req-{i}"], (i, fault, outcome)
    if fault in REJECTION_OF:
      assert isinstance(outcome.result, Rejection) and outcome.result.reason == REJECTION_OF[fault], outcome
    else:
      assert isinstance(outcome.result, Conversation), (i, fault, outcome.result)
      assert outcome.finish_reason == "stop"
  assert sum(o.attempts for o in outcomes.values()) == sum(endpoint.hits.values())
  assert endpoint.authorization == {f"Bearer {KEY}"}


def test_retry_after_is_honoured(monkeypatch):
  monkeypatch.setenv(KEY_ENV, KEY)
  endpoint = FakeChatEndpoint(fault=lambda key, attempt: "429" if attempt == 1 else None, retry_after_ms=400)

  async def one(client):
    async with client:
      return await client.complete(LLMRequest("r", "req-1"))

  with endpoint.serving() as url:
    start = time.perf_counter()
    reply = asyncio.run(one(make_client(config(url))))
    elapsed = time.perf_counter() - start
  assert reply.attempts == 2 and reply.text == "Human: hi"
  assert elapsed >= 0.4


def test_retry_after_header_forms():
  assert _retry_after_s({"retry-after-ms": "250"}) == 0.25
  assert _retry_after_s({"Retry-After": "7"}) == 7.0
  assert 0 < _retry_after_s({"Retry-After": time.strftime("%a, %d %b %Y %H:%M:%S GMT",
                                                         time.gmtime(time.time() + 30))}) <= 30
  assert _retry_after_s({"Retry-After": "soon"}) is None
  assert _retry_after_s({}) is None


def test_api_key_never_appears_in_logs_errors_or_outputs(monkeypatch, caplog, capsys, tmp_path):
  monkeypatch.setenv(KEY_ENV, KEY)
  caplog.set_level(logging.DEBUG)
  # The server echoes the Authorization header in its 401 body, as some real ones do.
  fault = {"req-0": "echo_401", "req-1": "503", "req-2": "500"}
  endpoint = FakeChatEndpoint(fault=lambda key, attempt: fault.get(key), reply=dialogue_reply)
  with endpoint.serving() as url:
    client = make_client(config(url, max_attempts=2))
    outcomes = generate_conversations(tasks(4), load_pool(), client, seed=0)
  assert endpoint.authorization == {f"Bearer {KEY}"}  # it was sent
  rejection = outcomes["t0"].result
  assert rejection.reason == "llm_http_401" and outcomes["t0"].attempts == 1
  assert "[api key]" in rejection.detail
  kept = [o.result for o in outcomes.values() if o.kept]
  write_conversations(kept, tmp_path / "kept.json")
  (tmp_path / "rejected.jsonl").write_text("".join(
      json.dumps({"id": o.id, "reason": o.result.reason, "detail": o.result.detail}) + "\n"
      for o in outcomes.values() if not o.kept))
  captured = capsys.readouterr()
  assert caplog.records, "the retries should have logged something"
  texts = [caplog.text, captured.out, captured.err, repr(client), repr(outcomes)]
  texts += [path.read_text() for path in tmp_path.iterdir()]
  assert all(KEY not in text for text in texts)


def test_missing_api_key_is_a_clear_error(monkeypatch):
  monkeypatch.delenv(KEY_ENV, raising=False)
  with pytest.raises(ValueError, match=KEY_ENV):
    make_client(config("http://127.0.0.1:9/v1"))
  assert make_client(config("http://127.0.0.1:9/v1", api_key_env="")) is not None


def test_request_bucket_spaces_requests():
  limiter = RateLimiter(requests_per_minute=1200, burst_s=0.05)  # 20/s, holds 1

  async def take(n):
    for _ in range(n):
      await limiter.acquire(0)

  start = time.perf_counter()
  asyncio.run(take(5))
  assert time.perf_counter() - start >= 4 / 20 * 0.95


def test_token_bucket_waits_and_refunds():
  limiter = RateLimiter(tokens_per_minute=60_000, burst_s=0.1)  # 1000 tokens/s, holds 100

  async def take(refund):
    for _ in range(3):
      await limiter.acquire(100)
      limiter.refund(refund)

  start = time.perf_counter()
  asyncio.run(take(refund=0))
  assert time.perf_counter() - start >= 0.19
  start = time.perf_counter()
  limiter = RateLimiter(tokens_per_minute=60_000, burst_s=0.1)
  asyncio.run(take(refund=100))  # usage showed nothing spent: no waiting
  assert time.perf_counter() - start < 0.05
  with pytest.raises(ValueError, match="tokens/minute bucket"):
    asyncio.run(limiter.acquire(500))


def test_limiters_sharing_a_state_file_share_one_quota(tmp_path):
  state = tmp_path / "quota.json"
  limiters = [RateLimiter(requests_per_minute=1200, burst_s=0.05, state_file=state) for _ in range(2)]

  async def take():
    for i in range(6):
      await limiters[i % 2].acquire(0)

  start = time.perf_counter()
  asyncio.run(take())
  # Two private quotas would let the 6 through in ~2/20 s; one shared quota needs 5/20 s.
  assert time.perf_counter() - start >= 5 / 20 * 0.95


def test_split_across_workers():
  share = LLMConfig(requests_per_minute=600, tokens_per_minute=90_000, concurrency=32).split_across(4)
  assert (share.requests_per_minute, share.tokens_per_minute, share.concurrency) == (150, 22_500, 8)
  shared = LLMConfig(requests_per_minute=600, concurrency=32, rate_state_file="/tmp/q.json").split_across(4)
  assert (shared.requests_per_minute, shared.concurrency) == (600, 8)  # the file already shares the quota
  with pytest.raises(ValueError, match="unknown llm config keys"):
    make_client({"backend": "template", "temprature": 0.7})


def test_configuration_mistakes_fail_clearly():
  with pytest.raises(ValueError, match="max_tokens=2048 exceeds"):
    make_client(LLMConfig(api_key_env="", tokens_per_minute=1000))
  with pytest.raises(ValueError, match="backend"):
    LLMConfig(backend="gpt")
  for url in ("localhost:8000/v1", "http://[::1/v1", "http://localhost:99999/v1"):
    with pytest.raises(ValueError, match="not an http"):
      make_client(LLMConfig(base_url=url, api_key_env=""))


def test_the_client_spends_its_requests_through_the_limiter(monkeypatch):
  monkeypatch.setenv(KEY_ENV, KEY)
  endpoint = FakeChatEndpoint(reply=dialogue_reply)
  with endpoint.serving() as url:
    client = make_client(config(url, requests_per_minute=300, rate_burst_s=0.2))  # 5/s, holds 1
    start = time.perf_counter()
    outcomes = generate_conversations(tasks(6), load_pool(), client, seed=0)
    elapsed = time.perf_counter() - start
  assert all(o.kept for o in outcomes.values())
  assert elapsed >= 5 / 5 * 0.95  # 6 requests through a bucket that refills one every 1/5 s


def test_the_template_backend_keeps_to_the_request_rate():
  client = make_client({"backend": "template", "requests_per_minute": 600, "rate_burst_s": 0.1})  # 10/s, holds 1
  start = time.perf_counter()
  outcomes = generate_conversations(tasks(4), load_pool(), client, seed=0)
  assert all(o.kept for o in outcomes.values())
  assert time.perf_counter() - start >= 3 / 10 * 0.95


def test_processes_sharing_a_state_file_take_turns(tmp_path):
  script = ("import asyncio, sys, time\n"
            "from mim_jax.llm.rate_limit import RateLimiter\n"
            "limiter = RateLimiter(requests_per_minute=600, burst_s=0.1, state_file=sys.argv[1])  # 10/s, holds 1\n"
            "async def main():\n"
            "  await asyncio.sleep(float(sys.argv[2]) - time.time())  # both start together\n"
            "  for _ in range(4):\n"
            "    await limiter.acquire(0)\n"
            "    print(time.time(), flush=True)\n"
            "asyncio.run(main())\n")
  start = str(time.time() + 1.5)
  workers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "quota.json"), start],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
             for _ in range(2)]
  takes = sorted(float(line) for worker in workers for line in worker.communicate(timeout=60)[0].split())
  assert len(takes) == 8
  # One shared bucket spaces all 8 takes 0.1 s apart; two private ones would pair them up.
  assert min(b - a for a, b in zip(takes, takes[1:])) >= 0.09
