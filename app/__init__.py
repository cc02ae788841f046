"""Glue between the config, Flower and the results: app builders, simulation, reports."""
