"""HTTP adapters: parse, authenticate, call a service, render."""
