"""One module per CLI command (parsing and presentation only)."""
