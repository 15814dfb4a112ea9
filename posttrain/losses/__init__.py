"""Losses (pure torch; never imports TRL or transformers)."""
