"""The experiments that ship with metajax: `metajax list` shows them; `metajax run NAME`."""
