"""Training, by role: `setup` builds a run from its config (model, optimizer,
loss, step, shardings, batch spec) for `loop` (the training loop, also the
quickstart's) and launch/aot_compile.py; `loss`, `step` and `state` are the
pieces it builds from; `optimizer` and `freeze` choose what trains and how
fast; `checkpoint`, `metrics`, `init`, `export` and `medium_targets` serve the
loop."""
