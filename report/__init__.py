"""What aggregate.py is made of: loading results (`load`) and per-image statistics (`per_image`), statistics over
seeds (`stats`), the paired image bootstrap (`bootstrap`), the study's tables (`tables`), its figures (`figures`)
and the optional W&B upload (`wandb_log`).

Everything here works on plain numpy arrays and dicts; nothing imports torch or the training code (results
files are read by `engine.results_format`, the torch-free reader evaluate.py uses too).
"""
