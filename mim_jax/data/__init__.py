"""Tokenizer, chat template, features and the input pipeline."""
