"""Where image–caption pairs come from: TSV, a folder, webdataset shards or
synthetic drawings (open_source.py), fetched (download.py) and padded to
512×512 PNGs (padded_png.py)."""
