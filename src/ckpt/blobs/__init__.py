"""Blob storage: every byte ckpt stores goes through :class:`BlobStore` (fsspec underneath)."""

from ckpt.blobs.store import BlobStore, Reader

__all__ = ["BlobStore", "Reader"]
