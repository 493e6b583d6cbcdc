"""Bytes only, no I/O: manifests, the skeleton pickle, tensor dtypes and hashes, pack headers, the codec."""
