"""Teacher sampling for a recipe's data.mixture: sample (or read back) every teacher:* entry and report its speed.

    python benchmarks/bench_sampling.py recipes/smollm2-135m/compare/I-planned.yaml --teacher GGUF [--out DIR]

Fills the cache the distillation reads (``$TM_DISTILL_CACHE/teacher-data``), so a run after it starts training at
once; prints each entry's manifest (new tokens, seconds, tokens/s, batch size, device) and writes them to
DIR/sampling.json. Also samples the comparison's held-out-topic set (160 x 256 tokens, seed 12345).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import command_line, device_name, parser, utc_date, write_json  # noqa: E402
from tm_distill.convert import load_teacher  # noqa: E402
from tm_distill.data.mixture import teacher_spec  # noqa: E402
from tm_distill.data.teacher_data import TeacherDataSpec, manifest_of, teacher_data  # noqa: E402
from tm_distill.recipe import load_recipe  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("recipe")
    ap.add_argument("--teacher", default=None, help="override the recipe's teacher (alias, GGUF or HF folder)")
    ap.add_argument("--batch-size", type=int, default=None, help="rows per generate call (default: 256 on CUDA)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    recipe = load_recipe(args.recipe, [f"teacher={args.teacher}"] if args.teacher else [])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = load_teacher(recipe.teacher, dtype=torch.bfloat16 if device == "cuda" else torch.float32,
                           device=device)
    specs = [teacher_spec(e, recipe.seed, recipe.data.heldout_fraction, recipe.data.source)
             for e in recipe.data.mixture or [] if e.source.startswith("teacher:")]
    specs.append(TeacherDataSpec("instructions", 160, 256, seed=12345, heldout=True))
    result = {"command": command_line(__file__, argv), "device": device_name(device), "date": utc_date(),
              "entries": []}
    for spec in specs:
        teacher_data(teacher, spec, device=device, batch_size=args.batch_size)
        result["entries"].append(manifest_of(teacher, spec))
        print(json.dumps(result["entries"][-1]))
    if args.out:
        write_json(args.out / "sampling.json", result)
    return result


if __name__ == "__main__":
    main()
