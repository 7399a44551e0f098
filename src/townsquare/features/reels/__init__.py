"""Reels recommended from a conversation and a member's interests."""
