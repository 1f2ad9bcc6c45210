"""Small helpers shared by every stage (masks, atomic file writes)."""
