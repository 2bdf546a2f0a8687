"""Tokenizer, chat template, features, the batch spec and the input pipelines
(conversations and captions from TFDS; text windows for a Llama)."""
