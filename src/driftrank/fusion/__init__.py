"""fusion stage (see README)."""
