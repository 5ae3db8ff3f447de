"""Small helpers every part of the project shares: atomic file writes and the user-facing error type."""
from utils.fileio import (UserError, atomic_write_bytes, atomic_write_json, atomic_write_text, fsync_dir, json_safe,
                          parse_args_first, run_main, user_message)

__all__ = ["UserError", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "fsync_dir", "json_safe",
           "parse_args_first", "run_main", "user_message"]
