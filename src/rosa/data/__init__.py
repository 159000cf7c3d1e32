"""LLM-Adapters data: load and check the JSON files, find them, and build the seeded stand-in mixes."""

from rosa.data.catalog import GROUPS, TASKS, expand_tasks, task_family
from rosa.data.locate import load_dataset, resolve_data_dir, task_file, train_file, verify_data_dir
from rosa.data.mixes import MIXES, build_mix
from rosa.data.records import load_records

__all__ = [
    "load_records",
    "load_dataset",
    "resolve_data_dir",
    "task_file",
    "train_file",
    "verify_data_dir",
    "expand_tasks",
    "task_family",
    "TASKS",
    "GROUPS",
    "MIXES",
    "build_mix",
]
