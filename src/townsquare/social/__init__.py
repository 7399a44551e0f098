"""The host app's content that features read, the rules for who may see it, and its ingestion."""
