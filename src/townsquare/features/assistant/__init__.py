"""The assistant: persisted 1:1 conversations with streaming replies."""
