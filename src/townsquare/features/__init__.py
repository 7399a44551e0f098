"""Features: each a service (plain Python), its schemas, prompts and thin routes."""
