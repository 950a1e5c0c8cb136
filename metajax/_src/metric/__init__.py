"""metajax's metric layer (implementation; public names are re-exported elsewhere)."""
