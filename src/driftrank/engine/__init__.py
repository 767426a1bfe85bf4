"""engine stage (see README)."""
