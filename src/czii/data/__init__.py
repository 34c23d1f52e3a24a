"""Data layer: open a copick project or Kaggle directory as a :class:`Dataset` of runs, tomograms and picks."""

from czii.data.dataset import Dataset, Volume, load_solution, open_dataset

__all__ = ["Dataset", "Volume", "load_solution", "open_dataset"]
