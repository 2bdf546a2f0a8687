"""Bad and good image files, and a local HTTP server, for data_gen tests."""
from __future__ import annotations

import contextlib
import io
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


def encoded(fmt: str = "JPEG", size=(64, 40), color="red") -> bytes:
  out = io.BytesIO()
  Image.new("RGB", size, color).save(out, fmt)
  return out.getvalue()


def truncated_jpeg() -> bytes:
  """A JPEG cut in its entropy-coded data: the header reads, decoding fails."""
  out = io.BytesIO()
  Image.effect_noise((256, 256), 64).convert("RGB").save(out, "JPEG", quality=95)
  return out.getvalue()[:1500]


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
  """A tiny PNG whose header claims width×height pixels (IHDR patched, CRC
  fixed): 900 megapixels announced, a few dozen bytes on disk."""
  data = bytearray(encoded("PNG", (1, 1)))
  start = 8 + 8  # signature, then IHDR's length and type
  data[start:start + 8] = struct.pack(">II", width, height)
  data[start + 13:start + 17] = struct.pack(">I", zlib.crc32(bytes(data[start - 4:start + 13])))
  return bytes(data)


@contextlib.contextmanager
def http_server(routes: dict[str, tuple[int, bytes]], *, slow_s: float = 0.0):
  """Serves `routes` (path → (status, body)) on 127.0.0.1; a path starting
  /slow sleeps `slow_s` first. Yields the base URL and a per-path hit count
  (key "max in flight": the most requests served at once)."""
  hits: dict[str, int] = {"max in flight": 0}
  in_flight = [0]
  lock = threading.Lock()

  class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 — the name http.server calls
      with lock:
        hits[self.path] = hits.get(self.path, 0) + 1
        in_flight[0] += 1
        hits["max in flight"] = max(hits["max in flight"], in_flight[0])
      if self.path.startswith("/slow"):
        time.sleep(slow_s)
      with lock:
        in_flight[0] -= 1
      status, body = routes.get(self.path, (404, b"not found"))
      try:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
      except (BrokenPipeError, ConnectionResetError):
        pass

    def log_message(self, *args):
      pass

  server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
  finally:
    server.shutdown()
    server.server_close()


def ingested_work(root, pairs: int = 40):
  """A work dir with `pairs` synthetic pairs ingested and all of them in one
  cluster (what embed + cluster would give with --num-clusters 1)."""
  from data_gen.shards import atomic_write_json
  from data_gen.sources.download import Fetcher
  from data_gen.sources.open_source import open_source
  from data_gen.steps.ingest import ingest
  from data_gen.workdir import WorkDir
  work = WorkDir(root)
  ingest(open_source(f"synthetic:{pairs}"), work, fetcher=Fetcher(), shard_size=16)
  atomic_write_json(work.clusters, {"clusters": {"0": [pair["id"] for pair in work.read_pairs()]}})
  return work
