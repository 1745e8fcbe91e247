import copy

import pytest
import torch

from tests.conftest import tiny_llama
from tm_distill.convert import parse_transpoints, seed_student
from tm_distill.generation import cache_bytes, greedy_generate
from tm_distill.eval.speed import measure_speed, parameter_bytes, read_bytes_per_step, speed_ratios


def test_greedy_generate_matches_full_forward_argmax():
    teacher = tiny_llama(num_kv_heads=2, num_layers=2)
    student = seed_student(teacher, [3, 6])
    ids = torch.randint(0, 97, (1, 8), generator=torch.Generator().manual_seed(0))
    for model in (teacher, student):
        gen = greedy_generate(model, ids, 5)
        seq = ids
        for _ in range(5):  # recompute every step without a cache
            nxt = model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
        assert gen.tokens == seq[0, 8:].tolist()
        assert gen.prefill_s > 0 and gen.decode_s > 0


def test_student_cache_stays_constant_while_teacher_kv_grows():
    teacher = tiny_llama(num_kv_heads=2, num_layers=2)
    ssm = seed_student(teacher, parse_transpoints("ssm", 2))
    out = measure_speed({"teacher": teacher, "ssm": ssm}, [16, 64], decode_tokens=3, progress=False)
    assert out["memory_method"] == "parameter bytes + cache bytes" and out["lengths"] == [16, 64]
    t_rows, s_rows = out["results"]["teacher"], out["results"]["ssm"]
    assert t_rows[1]["cache_bytes"] > 3 * t_rows[0]["cache_bytes"] > 0
    assert s_rows[0]["cache_bytes"] == s_rows[1]["cache_bytes"] > 0
    for row in t_rows + s_rows:
        assert row["prefill_tokens_per_s"] > 0 and row["decode_tokens_per_s"] > 0
        assert row["peak_memory_bytes"] == row["parameter_bytes"] + row["cache_bytes"]


def test_real_teacher_and_student_speed_rows(smol, smol_students):
    out = measure_speed({"teacher": smol.model, "mixed": smol_students["mixed"]}, [48], decode_tokens=3,
                        warmup=False, progress=False)
    tensors = {t.data_ptr(): t for t in [*smol.model.parameters(), *smol.model.buffers()]}  # tied weights once
    assert parameter_bytes(smol.model) == sum(t.numel() * t.element_size() for t in tensors.values())
    assert parameter_bytes(smol.model) < 4 * 140e6  # 135M fp32 parameters, the tied head counted once
    for name in ("teacher", "mixed"):
        (row,) = out["results"][name]
        assert row["length"] == 48 and row["prefill_tokens_per_s"] > 0 and row["decode_tokens_per_s"] > 0
        assert row["cache_bytes"] > 0
    # the mixed student folds tokens past each layer's TransPoint into a fixed-size state
    gen = greedy_generate(smol_students["mixed"], torch.randint(0, 1000, (1, 40)), 2)
    assert cache_bytes(gen.cache) == sum(gen.cache.memory_bytes().values())


def test_speed_rows_stand_against_the_teacher_of_the_same_run():
    teacher = tiny_llama(num_kv_heads=2, num_layers=2)
    ssm = seed_student(teacher, parse_transpoints("ssm", 2))
    out = measure_speed({"teacher": teacher, "ssm": ssm}, [16], decode_tokens=3, progress=False)
    ratios = speed_ratios(out)
    (own,), (row,) = ratios["teacher"], ratios["ssm"]
    assert own == {"length": 16, "prefill_x_teacher": 1.0, "decode_x_teacher": 1.0}
    s_row, t_row = out["results"]["ssm"][0], out["results"]["teacher"][0]
    assert row["prefill_x_teacher"] == s_row["prefill_tokens_per_s"] / t_row["prefill_tokens_per_s"]
    assert row["decode_x_teacher"] == s_row["decode_tokens_per_s"] / t_row["decode_tokens_per_s"]
    # no bound on a CPU: its timings under shared load say nothing about the memory system
    assert out["copy_bytes_per_s"] is None and s_row["bound_ms"] is None and s_row["x_bound"] is None


def test_speed_ratios_by_hand_and_missing_timings():
    speed = {"results": {
        "teacher": [{"length": 8, "prefill_tokens_per_s": 100.0, "decode_tokens_per_s": 10.0},
                    {"length": 64, "prefill_tokens_per_s": 400.0, "decode_tokens_per_s": None}],
        "s": [{"length": 8, "prefill_tokens_per_s": 150.0, "decode_tokens_per_s": 25.0},
              {"length": 64, "prefill_tokens_per_s": 200.0, "decode_tokens_per_s": 9.0}]}}
    assert speed_ratios(speed)["s"] == [{"length": 8, "prefill_x_teacher": 1.5, "decode_x_teacher": 2.5},
                                        {"length": 64, "prefill_x_teacher": 0.5, "decode_x_teacher": None}]


def test_read_bytes_per_step_reads_one_row_of_an_untied_embedding():
    tied, untied = tiny_llama(num_layers=1, tie_word_embeddings=True), tiny_llama(num_layers=1)
    assert tied.lm_head.weight is tied.get_input_embeddings().weight
    assert read_bytes_per_step(tied) == parameter_bytes(tied)
    emb = untied.get_input_embeddings().weight
    assert read_bytes_per_step(untied) == parameter_bytes(untied) - (emb.shape[0] - 1) * emb.shape[1] * 4


@pytest.mark.gpu
def test_decode_step_against_the_measured_weight_read_bound_on_cuda(smol):
    model = copy.deepcopy(smol.model).to("cuda", torch.bfloat16)  # the session's fp32 teacher stays as it is
    out = measure_speed({"teacher": model}, [64], decode_tokens=8, progress=False)
    (row,) = out["results"]["teacher"]
    assert 1e11 < out["copy_bytes_per_s"] < 1e13  # an H100/H200 copies a few TB/s
    assert row["bound_ms"] == row["read_bytes_per_step"] / out["copy_bytes_per_s"] * 1e3
    # 270 MB of bf16 weights do not fit in L2: a step cannot read them much faster than the copy bandwidth
    assert row["x_bound"] > 0.7
