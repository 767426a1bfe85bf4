"""testing stage (see README)."""
