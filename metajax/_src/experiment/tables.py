"""Table cells of result summaries."""

from __future__ import annotations


def format_cell(cell: dict, spec: str = ".3f", ci_spec: str | None = None) -> str:
    """``mean ± ci95`` of a summary cell, with "(k of N non-finite)" where tasks diverged.

    Examples:
        >>> format_cell({"mean": 0.5, "ci95": 0.1, "n": 98, "nonfinite": 2})
        '0.500 ± 0.100 (2 of 100 non-finite)'
    """
    text = f"{cell['mean']:{spec}} ± {cell['ci95']:{ci_spec or spec}}"
    bad = cell.get("nonfinite", 0)
    if bad:
        text += f" ({bad} of {cell.get('n', 0) + bad} non-finite)"
    return text
