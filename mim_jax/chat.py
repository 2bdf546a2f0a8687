r"""Chat with a MIM checkpoint in the terminal: replies interleave text and
generated images (saved to --output, their paths printed inline).

  python -m mim_jax.chat --checkpoint /ckpt/mim-hf --sd /ckpt/sdxl-base --refiner /ckpt/sdxl-refiner

Input, one message per line:
  /image PATH     attach an image to the next message (repeat for up to 4);
                  it goes where the message has an <image> marker, else in
                  front of the text, in the order given
  TEXT            send the message (with the attached images)
  /reset          start a new conversation;   /quit (or end of input) to leave

`--checkpoint` is a Hugging Face Blip2-format MIM directory (mim_jax.convert.mim
save_hf_mim, or transformers' Blip2ForConditionalGeneration with a Llama LLM);
its tokenizer is read from the same directory unless --tokenizer is given.
A checkpoint of the qformer image-medium ablation (it has image_medium.json)
renders from the medium's conditioning instead of a description, which needs
an SD 1.x/2.x --sd whose text encoder the medium was trained against.
"""
from __future__ import annotations

import argparse
import functools
import sys
from typing import TextIO

import jax

IMAGE_COMMAND = "/image"
PLACEHOLDER_HELP = ("draws a coloured pattern from a hash of the description; NOT a diffusion model, only for "
                    "offline smoke tests of the chat loop")


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m mim_jax.chat", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True, help="MIM directory in Hugging Face Blip2 format")
  parser.add_argument("--tokenizer", help="tokenizer directory (default: the checkpoint directory)")
  parser.add_argument("--renderer", choices=("sd", "placeholder"), default="sd",
                      help=f"sd: Stable Diffusion from --sd (and --refiner); placeholder: {PLACEHOLDER_HELP}")
  parser.add_argument("--sd", help="diffusers Stable Diffusion (XL base) directory, for --renderer=sd "
                      "(SD 1.x/2.x for a qformer-medium checkpoint)")
  parser.add_argument("--refiner", help="diffusers SDXL refiner directory (optional)")
  parser.add_argument("--sd-steps", type=int, default=40)
  parser.add_argument("--sd-seed", type=int, default=42)
  parser.add_argument("--sd-dtype", choices=("bfloat16", "float32"), default="bfloat16")
  parser.add_argument("--output", default="chat_images", help="folder for generated images")
  parser.add_argument("--max-new-tokens", type=int, default=320)
  parser.add_argument("--images-per-turn", type=int, default=4, help="most images one reply may generate")
  parser.add_argument("--max-prompt-len", type=int, default=2048)
  parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  parser.add_argument("--top-p", type=float, default=1.0)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.renderer == "sd" and not args.sd:
    parser.error("--renderer=sd needs --sd DIR (a diffusers Stable Diffusion directory); "
                 "--renderer=placeholder runs without one but does not draw real images")
  return args


def make_renderer(args, medium: str = "language"):
  """Descriptions → images (the language medium), or the qformer medium's SD conditioning → images."""
  from mim_jax.infer.renderers import PlaceholderEmbeddingRenderer, PlaceholderRenderer

  if args.renderer == "placeholder":
    return PlaceholderRenderer(size=256) if medium == "language" else PlaceholderEmbeddingRenderer(size=256)
  from mim_jax.infer.sd_pipeline import StableDiffusion

  pipe = StableDiffusion.load(args.sd, refiner_dir=args.refiner, dtype=args.sd_dtype)
  if medium == "qformer":
    from mim_jax.infer.sd_embedding_renderer import StableDiffusionEmbeddingRenderer

    return StableDiffusionEmbeddingRenderer(pipe, seed=args.sd_seed, steps=args.sd_steps)
  return functools.partial(pipe.render, seed=args.sd_seed, steps=args.sd_steps)


def make_session(args):
  from mim_jax.convert.mim import load_hf_mim
  from mim_jax.data.tokenizer import Tokenizer
  from mim_jax.infer.chat import ChatSession
  from mim_jax.infer.generate import SamplingConfig
  from mim_jax.infer.mim_decode import TurnLimits
  from mim_jax.infer.mim_generate import MIMGenerator

  config, params = load_hf_mim(args.checkpoint)
  tokenizer = Tokenizer.load(args.tokenizer or args.checkpoint)
  if tokenizer.vocab_size > config.llm.vocab_size:
    raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the checkpoint's vocabulary is "
                     f"{config.llm.vocab_size}; pass the tokenizer the model was trained with (--tokenizer)")
  sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            stop_ids=(tokenizer.eos_id,))
  renderer = make_renderer(args, config.medium.kind)
  generator = MIMGenerator(config, jax.device_put(params), tokenizer, renderer, sampling=sampling,
                           limits=TurnLimits(max_images=args.images_per_turn), max_prompt_len=args.max_prompt_len)
  return ChatSession(generator, args.output, seed=args.seed)


def compose(text: str, images: list[str]) -> str:
  """Attached images go at the message's `<image>` markers, or in front."""
  if images and "<image>" not in text:
    return " ".join(["<image>"] * len(images) + [text])
  return text


def run(session, stdin: TextIO, stdout: TextIO) -> None:
  from mim_jax.infer.chat import ChatError

  attached: list[str] = []
  print("MIM chat: '/image PATH' attaches an image, a text line sends, /reset, /quit.", file=stdout, flush=True)
  for line in stdin:
    line = line.strip()
    if not line:
      continue
    if line == "/quit":
      break
    if line == "/reset":
      session.reset()
      attached = []
      print("(new conversation)", file=stdout, flush=True)
      continue
    if line.startswith(IMAGE_COMMAND + " ") or line == IMAGE_COMMAND:
      path = line[len(IMAGE_COMMAND):].strip()
      if not path:
        print("error: /image needs a path", file=stdout, flush=True)
      else:
        attached.append(path)
      continue
    try:
      reply = session.send(compose(line, attached), attached)
    except ChatError as error:
      print(f"error: {error}", file=stdout, flush=True)
      continue
    finally:
      attached = []
    for part in reply.parts:
      print(part if isinstance(part, str) else f"[image: {part}]", file=stdout, flush=True)


def main(argv=None, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
  args = parse_args(argv)
  try:
    session = make_session(args)
  except (FileNotFoundError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  run(session, stdin, stdout)
  return 0


if __name__ == "__main__":
  sys.exit(main())
