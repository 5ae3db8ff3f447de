"""Makes the repo root importable for tests and limits threads so the suite behaves on 2 cores."""
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests never write into the user's ~/.cache/huggingface: the datasets cache goes to a fresh temp dir.
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="boundary-seg-hf-"))
