"""Group chats: topic suggestions and catch-up summaries."""
