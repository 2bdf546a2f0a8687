"""ml_collections config files. Each starts with the command that runs it."""
