"""metajax's cpu layer (implementation; public names are re-exported elsewhere)."""
