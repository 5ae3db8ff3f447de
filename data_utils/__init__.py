"""Datasets: class tables, the Cityscapes `datasets` builder and the HF datasets source, the torch Dataset,
augmentation and crops, SDT, demo data."""
