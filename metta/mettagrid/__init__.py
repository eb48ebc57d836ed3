"""MettaGrid: a fast multi-agent grid world."""
