"""What aggregate.py is made of: loading results (`load`) and per-image statistics (`per_image`), statistics over
seeds (`stats`), the paired image bootstrap (`bootstrap`), the study's tables (`tables`), its figures (`figures`),
the offline interactive viewer (`viewer`, viewer.html), the optional W&B upload (`wandb_log`) and W&B Report
(`wandb_report`).

Everything here works on plain numpy arrays and dicts; nothing imports torch or the training code (results
files are read by `engine.results_format`, the torch-free reader evaluate.py uses too; the W&B Report names a run's
W&B group through the torch-free `engine.config`, imported on that path only).
"""
