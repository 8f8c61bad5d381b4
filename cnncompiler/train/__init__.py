"""Stage 7: training compiled models: the loop, optimizers and schedules, data, checkpoints."""

from .callbacks import BestCheckpoint, Callback, EarlyStopping, ProgressBar
from .trainer import History

__all__ = ["BestCheckpoint", "Callback", "EarlyStopping", "History", "ProgressBar"]
