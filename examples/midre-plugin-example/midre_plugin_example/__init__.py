"""Example midre plugin package: one defense, one attack, one model (registered by entry points)."""
