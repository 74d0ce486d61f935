"""Measurement: what happened to every offer, from decision to conversion."""
