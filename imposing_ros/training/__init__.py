"""Losses, trainer (single process or DistributedDataParallel) and the train command."""
