"""A local lm-evaluation-harness task (a YAML over a JSONL file, no hub) for the tests that run lm_eval."""

from __future__ import annotations

import json
from pathlib import Path

TASK = "tiny_qa"
QUESTIONS = [
    ("What color is the sky on a clear day?", ["blue", "green", "red"], 0),
    ("How many legs does a dog have?", ["two", "four", "six"], 1),
    ("What is the opposite of hot?", ["warm", "cold", "loud"], 1),
]


def write_local_task(folder: Path) -> Path:
    """Write tiny_qa.jsonl and tiny_qa.yaml (multiple choice, accuracy) into ``folder``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{TASK}.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "label": y}) + "\n" for q, c, y in QUESTIONS))
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return folder
