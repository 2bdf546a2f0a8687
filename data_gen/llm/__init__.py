"""data_gen's side of the LLM: choosing a backend (backends.py) and the
offline template backend (template.py); the client interface and the
OpenAI-compatible client live in mim_jax.llm."""
