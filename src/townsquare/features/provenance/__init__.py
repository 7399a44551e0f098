"""Provenance: was this image made here (the invisible watermark)?"""
