"""The study's loss variants as data (torch-free, so `engine.config` and `--help` do not import torch)."""

# The paper's weights per variant (CE weight 1, λ_d = 1.0, λ_b = 0.2). The keys of each entry are the
# terms the variant computes; build_loss's lambda_* arguments replace the dice / boundary values.
LOSS_WEIGHTS = {
    "A": {"ce": 1.0},
    "B": {"ce": 1.0, "dice": 1.0},
    "C": {"ce": 1.0, "dice": 1.0, "boundary": 0.2},
    "D": {"ce": 1.0, "boundary": 0.2},
}

# The auxiliary FCN head's loss is added with this weight (MMSegmentation's UPerNet configs, and the
# original study's training code).
AUX_LOSS_WEIGHT = 0.4
AUX_LOSS_KINDS = ("composite", "ce")
