"""Webhooks: signed, retried deliveries of events to the host app."""
