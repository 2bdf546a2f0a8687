"""LLM clients: the interface (client.py), an OpenAI-compatible async client
(openai_client.py) and its requests/tokens-per-minute limiter (rate_limit.py)."""
