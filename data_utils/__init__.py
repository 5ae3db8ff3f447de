"""Cityscapes data: the label table, the `datasets` builder, the torch Dataset, augmentation, SDT, demo data."""
