"""metajax's algorithms layer (implementation; public names are re-exported elsewhere)."""
