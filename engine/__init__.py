"""What train.py and evaluate.py share: the run config, building model/data from it, checkpoints, evaluation."""
