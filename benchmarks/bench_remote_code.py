"""A student loaded from the code saved beside it vs the package's own classes: same greedy tokens, same speed.

    python benchmarks/bench_remote_code.py --out $OUT/remote_code.json                  # one GPU, about a minute
    python benchmarks/bench_remote_code.py --student runs/cpu-demo/final --out ...     # a real student folder
    python benchmarks/bench_remote_code.py --smoke --out /tmp/remote_code_smoke.json    # tiny, CPU, seconds (CI)

The student (unless --student): ``seed_student`` of a random Llama of bench_speed's --shape with --transpoints,
saved by ``save_student``. Each side runs in its own process, one after the other, with the same code (CHILD):
"package" imports tm_distill and loads the folder with its registered classes; "remote" runs where tm_distill
cannot be imported (``tests/isolated.py``) and loads it with ``trust_remote_code=True``. Each reports which fast
paths its modules found (mamba-ssm's scan, the fused Triton decode step, Liger's RoPE) and the backend its scan
dispatch picks on the device, the greedy tokens of --new-tokens after a random prompt of --prompt-len, and the
median wall time of ``generate`` over --repeats after a warm-up: with the default cache ("eager") and, on CUDA,
with a static TransMambaCache whose decode steps are CUDA-graph replays ("graphs", captures included).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import parser, write_json  # noqa: E402

# Runs in both processes; argv[2] is JSON {"folder", "mode", "device", "dtype", "prompt", "new", "repeats"}.
CHILD = r"""
import importlib, statistics, time
import torch
from transformers import AutoModelForCausalLM

args = json.loads(sys.argv[2])
device, remote = torch.device(args["device"]), args["mode"] == "remote"
if not remote:
    import tm_distill  # registers the Auto classes
model = AutoModelForCausalLM.from_pretrained(args["folder"], trust_remote_code=remote, dtype=getattr(torch, args["dtype"]))
model = model.to(device).eval()
modeling = sys.modules[type(model).__module__]
package = type(model).__module__.rpartition(".")[0]
names = args["modules"][args["mode"]]
ops, decode, fused = (importlib.import_module(names[k] if not remote else f"{package}.{names[k]}")
                      for k in ("ops", "decode", "fused"))
prompt = torch.tensor([args["prompt"]], device=device)


def run(graphs):
    kw = {}
    if graphs:
        kw[modeling.CACHE_KWARG] = modeling.TransMambaCache(model.config.num_hidden_layers,
                                                            max_length=prompt.shape[1] + args["new"], graphs=True)
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=args["new"], min_new_tokens=args["new"], do_sample=False,
                             pad_token_id=0, **kw)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out[0, prompt.shape[1]:].tolist()


def timed(graphs):
    tokens = run(graphs)  # warm-up: kernel compilation, autotuning
    times = []
    for _ in range(args["repeats"]):
        start = time.perf_counter()
        assert run(graphs) == tokens
        times.append(time.perf_counter() - start)
    return tokens, statistics.median(times)


out = {"class": type(model).__module__ + "." + type(model).__name__, "tm_distill_imported": "tm_distill" in sys.modules,
       "mamba_ssm": ops.HAS_MAMBA_SSM, "triton": decode.HAS_TRITON, "liger": fused.HAS_LIGER,
       "scan_backend": ops.resolve_backend(model.config.ssm_backend, device), "runs": {}}
for mode in ["eager"] + (["graphs"] if device.type == "cuda" else []):
    tokens, seconds = timed(mode == "graphs")
    out["runs"][mode] = {"tokens": tokens, "seconds": seconds, "tokens_per_s": args["new"] / seconds}
print("\nRESULT " + json.dumps(out))
"""


def module_names() -> dict:
    """The scan dispatch, decode step and fused-kernel modules: the package's names and their saved flat names."""
    from tm_distill.models.remote_code import flat_name  # noqa: PLC0415

    package = {"ops": "tm_distill.ops", "decode": "tm_distill.ops.decode", "fused": "tm_distill.ops.fused"}
    return {"package": package, "remote": {k: flat_name(v) for k, v in package.items()}}


def make_student(folder: Path, shape: str, transpoints: str, device: str, dtype: str) -> Path:
    import torch  # noqa: PLC0415

    from benchmarks.bench_speed import build  # noqa: PLC0415
    from tm_distill.checkpoint import save_student  # noqa: PLC0415
    from tm_distill.convert import parse_transpoints, seed_student  # noqa: PLC0415

    teacher = build(shape, torch.device(device), getattr(torch, dtype))
    n = teacher.config.num_hidden_layers
    student = seed_student(teacher, parse_transpoints(transpoints, n), transpoints, f"random {shape}", seed=0)
    return save_student(student.eval(), None, folder)


def run_side(mode: str, job: dict, workdir: Path) -> dict:
    """CHILD's result for one side: "package" in a plain process, "remote" in one without tm_distill."""
    from tests.isolated import run_without_tm_distill  # noqa: PLC0415

    arg = json.dumps({**job, "mode": mode})
    if mode == "remote":
        proc = run_without_tm_distill(CHILD, workdir, arg, blocked=job["blocked"])
    else:
        proc = subprocess.run([sys.executable, "-c", "import json, sys\n" + CHILD, "-", arg], cwd=ROOT,
                              capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.rpartition("\nRESULT ")[2])


def compare(package: dict, remote: dict) -> dict:
    """Per decode mode: whether the tokens agree and the remote side's time over the package's."""
    return {mode: {"same_tokens": remote["runs"][mode]["tokens"] == run["tokens"],
                   "time_ratio": remote["runs"][mode]["seconds"] / run["seconds"]}
            for mode, run in package["runs"].items()}


def parse(argv):
    p = parser(__doc__)
    p.add_argument("--student", help="a student folder (default: a random one of --shape)")
    p.add_argument("--shape", default="tiny", help="bench_speed's shapes: tiny, 1b, 8b")
    p.add_argument("--transpoints", default="cycle=0,128,256,512,1024,2048,4096,8192")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--block", default="", help="packages the remote side must do without, e.g. mamba_ssm,triton")
    p.add_argument("--smoke", action="store_true", help="tiny shape on the CPU in float32, few tokens")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.smoke:
        args.shape, args.transpoints, args.device, args.dtype = "tiny", "cycle=0,8,16,attn", "cpu", "float32"
        args.prompt_len, args.new_tokens, args.repeats = 12, 8, 1
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = Path(args.student) if args.student else make_student(tmp / "student", args.shape, args.transpoints,
                                                                       "cpu", args.dtype)
        vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
        prompt = [(7919 * i + 13) % vocab for i in range(args.prompt_len)]  # fixed, no RNG to agree on
        job = {"folder": str(folder.resolve()), "device": args.device, "dtype": args.dtype, "prompt": prompt,
               "new": args.new_tokens, "repeats": args.repeats, "modules": module_names(),
               "blocked": [b for b in args.block.split(",") if b]}
        sides = {mode: run_side(mode, job, tmp) for mode in ("package", "remote")}
    data = {"meta": {k: v for k, v in vars(args).items() if k != "out"}, **sides,
            "comparison": compare(sides["package"], sides["remote"])}
    write_json(Path(args.out), data)
    print(json.dumps({k: data[k] for k in ("meta", "comparison")}, indent=1))
    return data


if __name__ == "__main__":
    main()
