import torch

from tests.conftest import tiny_llama
from tm_distill.convert import parse_transpoints, seed_student
from tm_distill.generation import cache_bytes, greedy_generate
from tm_distill.eval.speed import measure_speed, parameter_bytes


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
