"""Imagine and Reimagine: images from prompts, group remixes with version trees."""
