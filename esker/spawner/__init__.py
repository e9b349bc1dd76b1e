"""Profiles to launch plans, and the backends that run them."""
