"""Hybrid search (words and meaning), search summaries with citations, and the indexes."""
