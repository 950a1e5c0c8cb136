"""metajax's experiment layer (implementation; public names are re-exported elsewhere)."""
