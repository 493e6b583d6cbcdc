"""Turning training states into bytes and back (skeleton pickles, tensor slots)."""
