"""Where the data pipeline's optional work runs: the names TrainConfig's choices, the Dataset and bench/ share
(no torch here, so engine.config can import them)."""
from __future__ import annotations

# Signed distance maps for a loss that needs them: "cpu" computes them in the loader workers, "cache" reads
# precompute_sdt.py's files there (the workers' sources); "gpu" computes them per batch on the training device.
WORKER_SDT_SOURCES = ("cpu", "cache")
SDT_SOURCES = ("gpu", *WORKER_SDT_SOURCES)  # --sdt-source (TrainConfig)
DATASET_SDT_SOURCES = ("none", *WORKER_SDT_SOURCES)  # what the Dataset does: nothing, or a worker-side source
# The photometric jitter + blur: on the device batch, per sample in the loader workers, or nowhere.
AUGMENT_PLACES = ("gpu", "cpu", "none")
