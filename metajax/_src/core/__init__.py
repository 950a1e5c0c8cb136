"""metajax's core layer (implementation; public names are re-exported elsewhere)."""
