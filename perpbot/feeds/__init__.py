"""Venue feeds: one module per protocol (spec + pure parser) and the feed process."""
