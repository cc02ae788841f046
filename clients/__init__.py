"""Flower clients: translate between Flower messages and the torch code in tasks/."""
