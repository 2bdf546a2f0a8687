"""Sources, downloads and ingest: bad records are counted by reason and the run goes on."""
import io
import json
import tarfile

import pytest
from PIL import Image

from data_gen.report import Skip
from data_gen.sources.download import Fetcher, FetchOptions, map_concurrently
from data_gen.sources.open_source import open_source
from data_gen.sources.padded_png import padded_png
from data_gen.sources.pairs import RawPair, SourceSkip
from data_gen.sources.synthetic import BACKGROUNDS, synthetic_pair
from data_gen.steps.ingest import ingest
from data_gen.workdir import WorkDir
from datagen_fixtures import bomb_png, encoded, http_server, truncated_jpeg

FAST = FetchOptions(timeout_s=0.5, retries=1, backoff_s=0.01, workers=4, per_host=2)


def test_padded_png_keeps_aspect_on_white():
  png = padded_png(encoded("JPEG", (100, 50), "blue"), name="x")
  image = Image.open(io.BytesIO(png))
  assert image.format == "PNG" and image.size == (512, 512) and image.mode == "RGB"
  assert image.getpixel((256, 10)) == (255, 255, 255)  # padding above the 512×256 band
  red, green, blue = image.getpixel((256, 256))
  assert blue > 200 and red < 30 and green < 30


def test_transparent_pixels_become_white():
  rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
  out = io.BytesIO()
  rgba.save(out, "PNG")
  assert Image.open(io.BytesIO(padded_png(out.getvalue(), name="x"))).getpixel((256, 256)) == (255, 255, 255)


@pytest.mark.parametrize("data, reason", [
    (b"", "zero_byte"),
    (b"definitely not an image", "not_an_image"),
    (truncated_jpeg(), "corrupt_image"),
    (bomb_png(), "decompression_bomb"),
])
def test_bad_image_bytes_raise_their_reason(data, reason):
  with pytest.raises(Skip) as caught:
    padded_png(data, name="p7")
  assert caught.value.reason == reason and "p7" in str(caught.value)


def test_tsv_ingest_counts_every_failure_and_keeps_the_rest(tmp_path):
  routes = {"/good.jpg": (200, encoded("JPEG")), "/good.png": (200, encoded("PNG", (30, 90))),
            "/corrupt.jpg": (200, truncated_jpeg()), "/empty.jpg": (200, b""), "/bomb.png": (200, bomb_png()),
            "/flaky.jpg": (503, b"busy")}
  with http_server(routes, slow_s=2.0) as (base, hits):
    rows = [b"a red box\t" + f"{base}/good.jpg".encode(),
            b"a tall red box\t" + f"{base}/good.png".encode(),
            b"cut short\t" + f"{base}/corrupt.jpg".encode(),
            b"nothing there\t" + f"{base}/empty.jpg".encode(),
            b"huge\t" + f"{base}/bomb.png".encode(),
            b"caf\xe9 not utf-8\t" + f"{base}/good.jpg".encode(),
            b"caption without url",
            b"gone\t" + f"{base}/missing.jpg".encode(),
            b"busy server\t" + f"{base}/flaky.jpg".encode(),
            b"too slow\t" + f"{base}/slow.jpg".encode(),
            b"not a url\tftp://example/x.jpg"]
    tsv = tmp_path / "cc.tsv"
    tsv.write_bytes(b"\n".join(rows) + b"\n")
    work = WorkDir(tmp_path / "work")
    tally, _ = ingest(open_source(f"tsv:{tsv}"), work, fetcher=Fetcher(FAST), shard_size=4)
  assert tally.kept == 2
  assert dict(tally.skipped) == {"corrupt_image": 1, "zero_byte": 1, "decompression_bomb": 1, "invalid_utf8": 1,
                                 "missing_field": 1, "http_404": 1, "http_503": 1, "timeout": 1, "bad_url": 1}
  assert hits["/flaky.jpg"] == 2  # a 503 is retried, a 404 is not
  assert hits["/missing.jpg"] == 1
  pairs = list(work.read_pairs())
  assert [(p["id"], p["caption"]) for p in pairs] == [("p000000000", "a red box"), ("p000000001", "a tall red box")]
  assert Image.open(work.images / pairs[1]["image"]).size == (512, 512)
  assert len(work.pair_shards()) == 3  # 11 rows in shards of 4


def test_downloads_respect_the_per_host_limit(tmp_path):
  image = encoded("PNG")
  routes = {f"/slow/{i}.png": (200, image) for i in range(8)}
  with http_server(routes, slow_s=0.2) as (base, hits):
    fetcher = Fetcher(FetchOptions(timeout_s=5, workers=8, per_host=2))
    pairs = [RawPair(i, "c", f"{base}/slow/{i}.png") for i in range(8)]
    results = list(map_concurrently(fetcher.image_bytes, pairs, workers=8))
  assert results == [image] * 8
  assert hits["max in flight"] == 2


def test_ingest_rerun_skips_finished_shards_and_keeps_their_counts(tmp_path):
  work = WorkDir(tmp_path)
  first, _ = ingest(open_source("synthetic:10"), work, fetcher=Fetcher(FAST), shard_size=4)
  (work.pairs / "shard-00001.jsonl").unlink()
  (work.images / "p000000005.png").unlink()
  second, notes = ingest(open_source("synthetic:10"), work, fetcher=Fetcher(FAST), shard_size=4)
  assert notes["shards done before this run"] == 2
  assert first == second and first.kept == 10
  assert (work.images / "p000000005.png").exists()
  with pytest.raises(ValueError, match=r"pairs_per_shard: 4 then, 5 now.*fresh --work"):
    ingest(open_source("synthetic:10"), work, fetcher=Fetcher(FAST), shard_size=5)


def test_folder_source(tmp_path):
  (tmp_path / "a.jpg").write_bytes(encoded("JPEG"))
  (tmp_path / "zero.jpg").write_bytes(b"")
  lines = [json.dumps({"image": "a.jpg", "caption": "a red box", "url": "http://x/a.jpg"}).encode(),
           json.dumps({"image": "zero.jpg", "caption": "empty"}).encode(),
           json.dumps({"image": "nowhere.jpg", "caption": "missing"}).encode(),
           json.dumps({"caption": "no image field"}).encode(),
           b'{"image": "a.jpg", "caption": "bad \xff byte"}',
           b"{not json"]
  (tmp_path / "captions.jsonl").write_bytes(b"\n".join(lines))
  tally, _ = ingest(open_source(f"folder:{tmp_path}"), WorkDir(tmp_path / "work"), fetcher=Fetcher(FAST))
  assert tally.kept == 1
  assert dict(tally.skipped) == {"zero_byte": 1, "missing_file": 1, "missing_field": 1, "invalid_utf8": 1,
                                 "malformed_json": 1}
  assert next(WorkDir(tmp_path / "work").read_pairs())["url"] == "http://x/a.jpg"


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def test_webdataset_source(tmp_path):
  with tarfile.open(tmp_path / "shard-000.tar", "w") as tar:
    _add(tar, "s/0001.jpg", encoded("JPEG"))
    _add(tar, "s/0001.txt", b"a red box")
    _add(tar, "s/0002.png", encoded("PNG"))
    _add(tar, "s/0002.json", json.dumps({"caption": "from json"}).encode())
    _add(tar, "s/0003.jpg", encoded("JPEG"))  # no caption
    _add(tar, "s/0004.jpg", truncated_jpeg())
    _add(tar, "s/0004.txt", b"cut")
    _add(tar, "s/0005.jpg", encoded("JPEG"))
    _add(tar, "s/0005.txt", b"\xff\xfe")
  (tmp_path / "shard-001.tar").write_bytes(b"garbage, not a tar")
  records = list(open_source(f"wds:{tmp_path}/shard-*.tar"))
  assert [r.caption for r in records if isinstance(r, RawPair)] == ["a red box", "from json", "cut"]
  assert [r.reason for r in records if isinstance(r, SourceSkip)] == ["missing_field", "invalid_utf8", "corrupt_tar"]
  tally, _ = ingest(iter(records), WorkDir(tmp_path / "work"), fetcher=Fetcher(FAST))
  assert tally.kept == 2 and tally.skipped["corrupt_image"] == 1


def test_synthetic_source_is_deterministic_and_true():
  caption, png = synthetic_pair(3)
  assert (caption, png) == synthetic_pair(3)
  assert synthetic_pair(3, seed=1) != (caption, png)
  image = Image.open(io.BytesIO(png)).convert("RGB")
  # The caption names the background; a corner pixel shows it.
  background = caption.rsplit(" on a ", 1)[1].removesuffix(" background")
  assert image.getpixel((0, 0)) == BACKGROUNDS[background]


def test_bad_source_spec_fails_when_opened(tmp_path):
  with pytest.raises(ValueError, match="KIND:ARGUMENT"):
    open_source("csv:x")
  with pytest.raises(ValueError, match="synthetic:48"):
    open_source("synthetic:many")
  with pytest.raises(FileNotFoundError, match="TSV source"):
    open_source(f"tsv:{tmp_path}/missing.tsv")
  with pytest.raises(FileNotFoundError, match="no captions.jsonl"):
    open_source(f"folder:{tmp_path}")
  with pytest.raises(FileNotFoundError, match="no tar shards match"):
    open_source(f"wds:{tmp_path}/*.tar")
