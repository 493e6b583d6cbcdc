"""Hand-built malicious pickles for tests that plant them in a checkpoint."""
