"""Noise schedule and samplers."""
