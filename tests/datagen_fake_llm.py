"""A real OpenAI-compatible HTTP endpoint on localhost that misbehaves on
demand, for the LLM client tests."""
from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from data_gen.dialogue import PAIRED_TAG
from data_gen.prompt import IMAGES_HEADER

FAULTS = ("429", "500", "503", "timeout", "bad_json", "no_choices", "cut", "length", "echo_401")
REQUEST_KEY = re.compile(r"\breq-\d+\b")


def prompt_captions(prompt: str) -> list[str]:
  """The captions of the images a generation prompt allows (not its examples')."""
  listed = prompt.split(IMAGES_HEADER + "\n", 1)[1].split("\n\n", 1)[0]
  return [caption.strip() for _, caption in PAIRED_TAG.findall(listed)]


class FakeChatEndpoint:
  """`fault(key, attempt)` picks the behaviour of each request: None for a
  good reply, or one of FAULTS. `key` is the first `req-N` in the prompt (the
  whole prompt if none); `attempt` counts that key's requests from 1.
  `reply(prompt)` is the text of a good reply."""

  def __init__(self, fault=lambda key, attempt: None, reply=lambda prompt: "Human: hi", hang_s: float = 3.0,
               retry_after_ms: int = 5):
    self.fault, self.reply, self.hang_s, self.retry_after_ms = fault, reply, hang_s, retry_after_ms
    self.hits: Counter = Counter()
    self.authorization: set[str] = set()
    self._lock = threading.Lock()

  def _handler(self):
    endpoint = self

    class Handler(BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):
        return None

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        match = REQUEST_KEY.search(prompt)
        key = match.group(0) if match else prompt
        with endpoint._lock:
          endpoint.hits[key] += 1
          attempt = endpoint.hits[key]
          endpoint.authorization.add(self.headers.get("Authorization", ""))
        fault = endpoint.fault(key, attempt)
        if fault == "timeout":
          time.sleep(endpoint.hang_s)
        if fault in ("429", "500", "503"):
          headers = {"retry-after-ms": str(endpoint.retry_after_ms)} if fault == "429" else {}
          return self._send(int(fault), b'{"error": {"message": "try again"}}', headers)
        if fault == "echo_401":
          return self._send(401, f'{{"error": "bad key {self.headers.get("Authorization")}"}}'.encode())
        finish = "length" if fault == "length" else "stop"
        payload = json.dumps({"choices": [{"index": 0, "finish_reason": finish,
                                           "message": {"role": "assistant", "content": endpoint.reply(prompt)}}],
                              "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": 50}}).encode()
        if fault == "bad_json":
          return self._send(200, payload[:len(payload) // 2])
        if fault == "no_choices":
          return self._send(200, b'{"choices": []}')
        if fault == "cut":
          # Promise the whole body, send a part, hang up.
          self.send_response(200)
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(payload)))
          self.end_headers()
          self.wfile.write(payload[:20])
          self.wfile.flush()
          self.close_connection = True
          return None
        return self._send(200, payload)

      def _send(self, status, payload, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
          self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    return Handler

  @contextlib.contextmanager
  def serving(self):
    """Yields the base URL (…/v1) while the server runs in a thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
    server.daemon_threads = True  # a hung "timeout" handler must not hold up shutdown
    server.handle_error = lambda request, address: None  # writes to clients that timed out fail; expected
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
      yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
      server.shutdown()
      server.server_close()
