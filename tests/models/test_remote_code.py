"""A student folder carries its modeling code: plain transformers loads it where tm_distill is not installed
(the fresh processes of ``tests/isolated.py``)."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import tiny_llama
from tests.isolated import run_without_tm_distill
from tm_distill.checkpoint import save_student
from tm_distill.convert import parse_transpoints, seed_student
from tm_distill.models import TransMambaForCausalLM
from tm_distill.models.remote_code import (ENTRY_POINTS, RemoteCodeError, _relative_imports, auto_map, code_files,
                                           flat_name)
from tm_distill.ops import HAS_MAMBA_SSM

ROOT = Path(__file__).resolve().parents[2]

# Runs without tm_distill (tests/isolated.py): argv[2] is JSON {"jobs": [[folder or hub id, prompt ids, new tokens],
# ...], "device": ..., "dtype": ..., "path": [folders put first on sys.path], "fast": {flag: [flat module, name]}}.
CHILD = r"""
import importlib
args = json.loads(sys.argv[2])
sys.path[:0] = args["path"]
import torch
from transformers import AutoModelForCausalLM
out = {"generated": [], "classes": [], "fast_paths": []}
try:
    AutoModelForCausalLM.from_pretrained(args["jobs"][0][0])
    out["refused"] = ""
except ValueError as err:  # custom code needs trust_remote_code=True
    out["refused"] = str(err)
for folder, prompt, new in args["jobs"]:
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=getattr(torch, args["dtype"]))
    model = model.to(args["device"]).eval()
    ids = model.generate(torch.tensor([prompt], device=args["device"]), max_new_tokens=new, do_sample=False)
    out["generated"].append(ids[0].tolist())
    out["classes"].append(type(model).__module__ + "." + type(model).__name__)
    package = type(model).__module__.rpartition(".")[0]  # the saved code's modules: what decides the fast paths
    flags = {k: getattr(importlib.import_module(f"{package}.{m}"), name) for k, (m, name) in args["fast"].items()}
    ops = importlib.import_module(f"{package}.{args['fast']['mamba_ssm'][0]}")
    flags["scan_on_cuda"] = ops.resolve_backend("auto", torch.device("cuda"))
    flags["scan_on_cpu"] = ops.resolve_backend("auto", torch.device("cpu"))
    out["fast_paths"].append(flags)
out["tm_distill_imported"] = "tm_distill" in sys.modules
print("\nRESULT " + json.dumps(out))
"""


# each fast path's guard: the flag the saved code's module sets from what is importable
FAST_PATHS = {"mamba_ssm": (flat_name("tm_distill.ops"), "HAS_MAMBA_SSM"),
              "triton": (flat_name("tm_distill.ops.decode"), "HAS_TRITON"),
              "liger": (flat_name("tm_distill.ops.fused"), "HAS_LIGER")}


def run_fresh(jobs: list, tmp_path: Path, device: str = "cpu", dtype: str = "float32", path: tuple = (),
              blocked: tuple = ()) -> dict:
    """Generate with each job's folder in a process where tm_distill (and ``blocked``) is not importable and
    ``path`` comes first on sys.path; CHILD's JSON output."""
    arg = json.dumps({"jobs": jobs, "device": device, "dtype": dtype, "path": [str(p) for p in path],
                      "fast": FAST_PATHS})
    proc = run_without_tm_distill(CHILD, tmp_path, arg, blocked=blocked)
    return json.loads(proc.stdout.rpartition("\nRESULT ")[2])


def _student(spec: str, layers: int = 4, **options):
    teacher = tiny_llama(num_kv_heads=2, num_layers=layers)
    return seed_student(teacher, parse_transpoints(spec, layers), spec, "tiny", seed=1, **options).eval()


def _save(model, folder: Path) -> Path:
    save_student(model, None, folder)
    return folder


def test_student_generates_the_same_tokens_without_tm_distill(tmp_path):
    prompt = torch.randint(0, 97, (7,), generator=torch.Generator().manual_seed(0)).tolist()
    students = {  # the decode crosses TransPoints 0, 5 and 9; one layer stays attention
        "plain": _student("0,5,9,attn"),
        "options": _student("0,5,9,attn", use_z_gate=True, use_conv=True, bc_feature_map="silu", ssm_c_scale=True),
    }
    jobs, want = [], []
    for name, model in students.items():
        folder = _save(model, tmp_path / name)
        loaded = AutoModelForCausalLM.from_pretrained(folder).eval()  # tm_distill's own classes
        assert type(loaded) is TransMambaForCausalLM
        want.append(loaded.generate(torch.tensor([prompt]), max_new_tokens=14, do_sample=False)[0].tolist())
        jobs.append([str(folder), prompt, 14])
    got = run_fresh(jobs, tmp_path)
    assert got["generated"] == want
    assert all(c.startswith("transformers_modules.") and c.endswith("modeling_transmamba.TransMambaForCausalLM")
               for c in got["classes"]), got["classes"]
    assert not got["tm_distill_imported"]
    assert "trust_remote_code=True" in got["refused"]  # custom code is opt-in, as for any Hub model


def test_a_student_folder_carries_code_and_auto_map(tmp_path):
    folder = _save(_student("cycle=0,8"), tmp_path / "s")
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == auto_map()
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_transmamba.TransMambaForCausalLM"
    assert sorted(p.name for p in folder.glob("*.py")) == sorted(code_files())
    for name, text in code_files().items():
        assert (folder / name).read_text() == text


def test_old_students_without_code_still_load_with_the_package(tmp_path):
    model = _student("cycle=0,8")
    folder = _save(model, tmp_path / "old")
    for path in folder.glob("*.py"):  # what convert wrote before checkpoints carried their code
        path.unlink()
    config = json.loads((folder / "config.json").read_text())
    del config["auto_map"]
    (folder / "config.json").write_text(json.dumps(config))
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def _package_tokens(folder: Path, prompt: list[int], new: int) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(folder).eval()  # tm_distill's own classes
    return model.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False)[0].tolist()


def test_saved_code_requires_no_package_beyond_torch_and_transformers(tmp_path):
    """transformers' loader requires every package a remote-code file imports outside a try block (for a Hub repo,
    in every file): mamba-ssm, Triton and Liger-Kernel are optional, so their imports sit in try blocks."""
    from transformers.dynamic_module_utils import get_imports

    required = set()
    for name, text in code_files().items():
        (tmp_path / name).write_text(text)
        required |= set(get_imports(tmp_path / name))
    assert required - set(sys.stdlib_module_names) == {"torch", "transformers", "huggingface_hub"}


def _hub_snapshot(folder: Path, cache: Path, repo: str) -> None:
    """Lay ``folder`` out as the Hub cache holds a downloaded repo (what from_pretrained(repo id) reads offline)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)


def test_a_student_from_the_hub_loads_where_no_kernel_package_is_installed(tmp_path, monkeypatch):
    """Loaded by hub id (transformers checks each saved file's imports, not only the entry file's, as it does for
    a local folder) in a process where mamba-ssm, Triton and Liger-Kernel cannot be imported: the PyTorch paths."""
    folder = _save(_student("0,5,9,attn"), tmp_path / "student")
    _hub_snapshot(folder, tmp_path / "hub", "someone/transmamba-student")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    prompt = list(range(3, 10))
    got = run_fresh([["someone/transmamba-student", prompt, 12]], tmp_path,
                    blocked=("mamba_ssm", "triton", "liger_kernel"))
    assert got["generated"] == [_package_tokens(folder, prompt, 12)]
    assert got["fast_paths"] == [{"mamba_ssm": False, "triton": False, "liger": False, "scan_on_cuda": "torch",
                                  "scan_on_cpu": "torch"}]


def test_saved_code_takes_the_fast_paths_where_their_packages_are_importable(tmp_path):
    """The saved modules carry their own guards: with mamba-ssm and Liger-Kernel importable (stand-in packages
    here, no CPU kernels exist) the scan dispatch picks mamba-ssm for CUDA tensors and the reference on the CPU,
    where the tokens stay the package's; without them, the reference everywhere."""
    fakes = tmp_path / "fakes"
    for package in ("mamba_ssm", "liger_kernel"):
        (fakes / package).mkdir(parents=True)
        (fakes / package / "__init__.py").write_text("")
    folder = _save(_student("0,5,9,attn"), tmp_path / "student")
    prompt = list(range(3, 10))
    with_fakes = run_fresh([[str(folder), prompt, 12]], tmp_path, path=(fakes,), blocked=("triton",))
    without = run_fresh([[str(folder), prompt, 12]], tmp_path, blocked=("mamba_ssm", "triton", "liger_kernel"))
    assert with_fakes["fast_paths"] == [{"mamba_ssm": True, "triton": False, "liger": True,
                                         "scan_on_cuda": "mamba_ssm", "scan_on_cpu": "torch"}]
    assert without["fast_paths"] == [{"mamba_ssm": False, "triton": False, "liger": False,
                                      "scan_on_cuda": "torch", "scan_on_cpu": "torch"}]
    assert with_fakes["generated"] == without["generated"] == [_package_tokens(folder, prompt, 12)]


def _normalized(module: str, tree: ast.AST) -> str:
    """ast.dump of a package module with each relative import written as the flat import it must become."""
    path = Path(importlib.util.find_spec(module).origin)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            node.module = flat_name(importlib.util.resolve_name("." * node.level + (node.module or ""), package))
            node.level = 1
    return ast.dump(tree)


def _modules_saved() -> dict[str, str]:
    """flat file name -> package module, for every module of models/ and ops/."""
    out = {}
    for sub in ("models", "ops"):
        for path in (ROOT / "tm_distill" / sub).glob("*.py"):
            module = f"tm_distill.{sub}" + ("" if path.stem == "__init__" else f".{path.stem}")
            out[f"{flat_name(module)}.py"] = module
    return out


def test_saved_code_is_the_package_code_with_flat_imports():
    """One source of truth: each saved file is its package module, statement for statement, imports flattened;
    the saved set is closed (every flat import names a saved file) and contains every entry point."""
    files, modules = code_files(), _modules_saved()
    assert {f"{flat_name(m)}.py" for m, _ in ENTRY_POINTS.values()} <= set(files)
    for name, text in files.items():
        module = modules[name]
        source = Path(importlib.util.find_spec(module).origin).read_text()
        assert ast.dump(ast.parse(text)) == _normalized(module, ast.parse(source)), name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and f"{node.module}.py" in files, (name, node.module)
    # the loader finds dependencies by `from .name import` lines: every saved file is reached from the entries
    reached, todo = set(), [f"{flat_name(m)}.py" for m, _ in ENTRY_POINTS.values()]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += [f"{m}.py" for m in re.findall(r"^\s*from\s+\.(\S+)\s+import", files[name], re.MULTILINE)]
    assert reached == set(files)


def test_no_hand_kept_copy_of_the_saved_files_in_the_repository():
    names = set(code_files())
    kept = [p for d in ("tm_distill", "tests", "benchmarks", "scripts", "recipes", "docs") if (ROOT / d).exists()
            for p in (ROOT / d).rglob("*.py") if p.name in names]
    assert not kept


@pytest.mark.parametrize("source, message", [
    ("from ..ops import fused\n", "imports module tm_distill.ops.fused as an object"),
    ("import tm_distill.ops\n", "imports tm_distill by name"),
    ("from tm_distill.ops import ssd_scan\n", "imports tm_distill by name"),
    ("def f():\n    from ..training.loop import train_stage\n", "imports tm_distill.training.loop"),
])
def test_model_code_that_a_checkpoint_cannot_carry_is_refused(source, message):
    path = ROOT / "tm_distill" / "models" / "mixer.py"
    with pytest.raises(RemoteCodeError, match=message.replace(".", r"\.")):
        _relative_imports("tm_distill.models.mixer", path, source)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_MAMBA_SSM, reason="mamba-ssm not installed")
def test_self_contained_student_matches_the_package_on_cuda(tmp_path):
    """On CUDA with the kernels installed (benchmarks/bench_remote_code.py, each side in its own process): loaded
    from its saved code where tm_distill cannot be imported, a student takes the same fast paths as with the
    package, generates the same greedy tokens (default cache, and CUDA-graph decode on a static cache), and
    within 10% of the package's time."""
    from benchmarks import bench_remote_code as bench

    data = bench.main(["--out", str(tmp_path / "remote_code.json"), "--prompt-len", "512", "--new-tokens", "128",
                       "--repeats", "5"])
    package, remote = data["package"], data["remote"]
    assert not remote["tm_distill_imported"] and remote["class"].startswith("transformers_modules.")
    assert package["class"].startswith("tm_distill.")
    for side in (package, remote):
        assert side["mamba_ssm"] and side["triton"] and side["scan_backend"] == "mamba_ssm", side
    assert remote["liger"] == package["liger"]
    assert set(data["comparison"]) == {"eager", "graphs"}
    for mode, result in data["comparison"].items():
        assert result["same_tokens"], mode
        assert result["time_ratio"] <= 1.10, (mode, result)
