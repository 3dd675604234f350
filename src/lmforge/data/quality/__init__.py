"""Quality filtering: Gopher quality and repetition, C4 and FineWeb rules for prose, code rules for code."""
