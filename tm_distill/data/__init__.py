"""Data: corpora, loading through `datasets`, tokenization and packing."""
