"""Preprocessing equals transformers' BlipImageProcessor (PIL backend) at BLIP-2's
settings, for real-sized images of several shapes and modes; bad files fail
with their name in the message."""
import numpy as np
import pytest
import transformers
from PIL import Image

from mim_jax.data.images import BadImageError, load_image, load_pixels, preprocess_image

# (file name, width, height, mode): landscape JPEG, tall PNG, large square, grayscale, RGBA.
IMAGES = [("photo.jpg", 640, 480, "RGB"), ("tall.png", 300, 900, "RGB"), ("square.png", 1024, 1024, "RGB"),
          ("gray.png", 500, 375, "L"), ("alpha.png", 320, 240, "RGBA")]


def _make(path, width, height, mode, seed=0):
  """Smooth gradients plus noise: both edges and texture go through the bicubic filter."""
  rng = np.random.RandomState(seed)
  y, x = np.mgrid[0:height, 0:width]
  channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
  base = np.stack([(x * (c + 1) + y * (3 - c)) % 256 for c in range(channels)], axis=-1)
  array = np.clip(base + rng.randint(-40, 40, base.shape), 0, 255).astype(np.uint8)
  Image.fromarray(array[..., 0] if mode == "L" else array, mode).save(path)
  return path


@pytest.fixture(scope="module")
def hf_processor():
  # BLIP-2's preprocessor_config.json: 224x224 bicubic, rescale 1/255, OpenAI CLIP mean/std, RGB conversion.
  return transformers.BlipImageProcessorPil(size={"height": 224, "width": 224})


@pytest.mark.parametrize("name,width,height,mode", IMAGES)
def test_matches_blip_image_processor(tmp_path, hf_processor, name, width, height, mode):
  path = _make(tmp_path / name, width, height, mode)
  got = load_pixels(path)
  assert got.shape == (224, 224, 3) and got.dtype == np.float32
  # TextBind opens images with .convert("RGB") and then calls the processor.
  expected = hf_processor(Image.open(path).convert("RGB"), return_tensors="np")["pixel_values"][0]
  assert np.abs(got - expected.transpose(1, 2, 0)).max() <= 1e-5
  if mode == "RGBA":
    # Handed the RGBA image itself, HF composites onto white; TextBind (and we) drop alpha.
    composited = hf_processor(Image.open(path), return_tensors="np")["pixel_values"][0]
    assert not np.allclose(got, composited.transpose(1, 2, 0), atol=1e-2)


def test_arrays_and_images_agree(tmp_path):
  image = load_image(_make(tmp_path / "a.png", 333, 222, "RGB"))
  np.testing.assert_array_equal(preprocess_image(np.asarray(image)), preprocess_image(image))
  with pytest.raises(ValueError, match=r"expected a uint8 \(H, W\) or \(H, W, 3\) array, got float32"):
    preprocess_image(np.zeros((8, 8, 3), np.float32))


def test_bad_files_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="image .*missing.jpg does not exist"):
    load_image(tmp_path / "missing.jpg")
  with pytest.raises(FileNotFoundError, match="is not a file"):
    load_image(tmp_path)
  (tmp_path / "empty.jpg").write_bytes(b"")
  with pytest.raises(BadImageError, match="image .*empty.jpg cannot be decoded"):
    load_image(tmp_path / "empty.jpg")
  (tmp_path / "noise.png").write_bytes(np.random.RandomState(0).bytes(4096))
  with pytest.raises(BadImageError, match="image .*noise.png cannot be decoded"):
    load_image(tmp_path / "noise.png")
  whole = _make(tmp_path / "whole.jpg", 640, 480, "RGB").read_bytes()
  (tmp_path / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
  with pytest.raises(BadImageError, match="image .*truncated.jpg cannot be decoded"):
    load_image(tmp_path / "truncated.jpg")


def test_decompression_bomb_guard(tmp_path):
  path = _make(tmp_path / "big.png", 640, 480, "RGB")
  with pytest.raises(BadImageError, match=r"big.png is 640x480 = 307200 pixels, over the limit of 100000"):
    load_image(path, max_pixels=100_000)
  assert load_image(path).size == (640, 480)
