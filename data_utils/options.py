"""Names of the data pipeline that light importers share: TrainConfig's choices, the Dataset, bench/ and the entry
scripts' parsers (no torch here, so engine.config and `--help` can import them)."""
from __future__ import annotations

# Signed distance maps for a loss that needs them: "cpu" computes them in the loader workers, "cache" reads
# precompute_sdt.py's files there (the workers' sources); "gpu" computes them per batch on the training device.
WORKER_SDT_SOURCES = ("cpu", "cache")
SDT_SOURCES = ("gpu", *WORKER_SDT_SOURCES)  # --sdt-source (TrainConfig)
DATASET_SDT_SOURCES = ("none", *WORKER_SDT_SOURCES)  # what the Dataset does: nothing, or a worker-side source
# The photometric jitter + blur: on the device batch, per sample in the loader workers, or nowhere.
AUGMENT_PLACES = ("gpu", "cpu", "none")
# Splits without real labels (Cityscapes ships placeholders for test): evaluated into predictions, no metrics.
UNLABELLED_SPLITS = ("test",)
