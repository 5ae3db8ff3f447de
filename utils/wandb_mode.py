"""How a W&B run starts without ever prompting for a login: the one credential check train.py and aggregate.py share.

Unless `WANDB_MODE` is set (then wandb obeys it: online / offline / disabled), a run is `online` when an API key
is already on this machine (`$WANDB_API_KEY`, or the netrc entry `wandb login` writes for the W&B host of
`$WANDB_BASE_URL`, in `$NETRC` or `~/.netrc`) and `offline` otherwise; an offline run is uploaded later with
`wandb sync <its folder>`. Nothing here imports wandb or touches the network.

    >>> wandb.init(project="boundary-seg", mode=wandb_init_mode())
"""
from __future__ import annotations

import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_HOST = "api.wandb.ai"
TRAIN_JOB_TYPE, AGGREGATE_JOB_TYPE = "train", "aggregate"  # W&B job types of train.py's and aggregate.py's runs


def wandb_logged_in() -> bool:
    """True when wandb would find an API key: $WANDB_API_KEY, or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", f"https://{DEFAULT_HOST}")).hostname or DEFAULT_HOST
    path = os.environ.get("NETRC") or Path.home() / ".netrc"  # where wandb login writes it
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):  # no file, unreadable, or malformed: no login
        return False


def wandb_init_mode() -> str | None:
    """The `mode` for `wandb.init`: None when WANDB_MODE is set (wandb reads it itself), else "online" when
    logged in (`wandb_logged_in`) and "offline" otherwise."""
    if os.environ.get("WANDB_MODE"):
        return None
    return "online" if wandb_logged_in() else "offline"
