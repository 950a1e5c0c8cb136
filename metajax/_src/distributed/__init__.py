"""metajax's distributed layer (implementation; public names are re-exported elsewhere)."""
