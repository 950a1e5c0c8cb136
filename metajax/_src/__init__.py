"""Implementation of metajax; the public names are re-exported by `metajax`."""
