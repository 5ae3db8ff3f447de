"""Small helpers every part of the project shares: atomic file writes and the user-facing error type.

`utils.threads` is imported first: it sets OpenMP's wait policy, which must happen before torch loads OpenMP."""
from utils import threads  # noqa: F401  (first: see utils.threads)
from utils.fileio import (EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_PARTIAL_FAILURE, RenamedFlag, UserError,
                          atomic_write_bytes, atomic_write_json, atomic_write_text, disk_full_advice, free_space,
                          fsync_dir, human_bytes, json_safe, make_output_dir, parse_args_first, run_main, user_message)

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_PARTIAL_FAILURE", "RenamedFlag", "UserError",
           "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "disk_full_advice", "free_space",
           "fsync_dir", "human_bytes", "json_safe", "make_output_dir", "parse_args_first", "run_main", "user_message"]
