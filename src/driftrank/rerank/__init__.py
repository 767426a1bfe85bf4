"""rerank stage (see README)."""
