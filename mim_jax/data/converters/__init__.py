"""One converter per public training-data format, each turning its files into
schema.py records: `records(input, images, counts, source, workers)` yields record
dicts and counts what it skips. `CONVERTERS` maps the CLI's source names to
(record kind, converter module); see convert_datasets.py.
"""
from mim_jax.data.converters import caption_tsv, llava, minigpt4, multiinstruct, platypus, shikra, textbind, webdataset

CONVERTERS = {
    "llava": ("conversation", llava),
    "minigpt4": ("conversation", minigpt4),
    "shikra": ("conversation", shikra),
    "multiinstruct": ("conversation", multiinstruct),
    "platypus": ("conversation", platypus),
    "textbind": ("conversation", textbind),
    "caption_tsv": ("caption", caption_tsv),
    "webdataset": ("caption", webdataset),
}
