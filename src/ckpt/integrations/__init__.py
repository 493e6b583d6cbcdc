"""Integrations: torch.distributed.checkpoint, Lightning, Hugging Face."""
