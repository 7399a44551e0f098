"""Shops: product descriptions grounded in a listing's attributes."""
