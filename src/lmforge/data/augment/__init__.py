"""Label-preserving augmentation of the training split (token deletion, swap, insertion; renaming)."""
