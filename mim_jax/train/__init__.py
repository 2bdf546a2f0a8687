"""Training: optimizer, loss and jitted steps under shardings."""
