"""``lmforge compress``: pruning (magnitude, Wanda, 2:4, structured MLP channels) and a size / speed / quality table."""
