"""replay stage (see README)."""
