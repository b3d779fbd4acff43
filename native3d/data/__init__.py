"""Shard schema and WebDataset readers and writers."""
