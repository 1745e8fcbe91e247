"""`tm-distill serve`: a student behind transformers' OpenAI-compatible server, queried with the openai client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tm_distill.checkpoint import save_student
from tm_distill.cli import cli
from tm_distill.convert import parse_transpoints, seed_student

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("fastapi", reason="the serve extra is not installed")
openai = pytest.importorskip("openai", reason="the serve extra is not installed")


@pytest.fixture(scope="module")
def student_dir(smol, tmp_path_factory):
    """A student of the real teacher (its tokenizer and chat template); layers switch within the chat prompt."""
    n = smol.model.config.num_hidden_layers
    spec = "cycle=0,16,32,attn"
    student = seed_student(smol.model, parse_transpoints(spec, n), spec, "smollm2-135m", seed=1).eval()
    return save_student(student, smol.tokenizer, tmp_path_factory.mktemp("serve") / "student")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-4000:]
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError("the server did not come up")


@pytest.fixture(scope="module")
def server(student_dir):
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    log = student_dir.parent / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tm_distill.cli", "serve", str(student_dir), "--port",
                                 str(port), "--device", "cpu"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    try:
        _wait_healthy(proc, url, log)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful stop; the model's process follows its parent
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _greedy_reply(student_dir: Path, smol, question: str, new_tokens: int) -> str:
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    model = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    ids = smol.tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False)
    return smol.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_openai_client_gets_a_chat_completion_and_a_streamed_one(server, student_dir, smol):
    client = openai.OpenAI(base_url=server + "/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == [str(student_dir)]
    question = "What is the capital of France?"
    want = _greedy_reply(student_dir, smol, question, 12)
    assert want.strip()
    messages = [{"role": "user", "content": question}]
    reply = client.chat.completions.create(model=str(student_dir), messages=messages, max_tokens=12, temperature=0)
    assert reply.choices[0].message.content == want
    assert reply.usage.completion_tokens == 12
    chunks = client.chat.completions.create(model=str(student_dir), messages=messages, max_tokens=12, temperature=0,
                                            stream=True)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 1 and "".join(deltas) == want  # token by token, the same text


def test_transformers_serve_itself_cannot_load_a_student(student_dir):
    """Why `tm-distill serve` exists (docs/serving.md): transformers' loader looks the class up in the transformers
    module. If this starts passing, `transformers serve --trust-remote-code` can host students: say so in the docs."""
    from transformers.cli.serving.model_manager import ModelLoader  # noqa: PLC0415

    with pytest.raises(AttributeError, match="has no attribute TransMambaForCausalLM"):
        ModelLoader(device="cpu", trust_remote_code=True)._load_model(str(student_dir))


def test_serve_refuses_a_folder_that_is_not_a_student(tmp_path):
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "nothing")])
    assert result.exit_code != 0 and "does not exist" in result.output and "Traceback" not in result.output
