"""``lmforge merge``: model soups, task arithmetic, TIES, DARE and SLERP, streamed tensor by tensor, and ensembles."""
