"""Reference training loop built on the store."""
