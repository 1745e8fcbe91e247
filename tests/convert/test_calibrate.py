"""Calibrated seeding: the gain/decay encoding, the scans and fits it rests on, and its guarantees."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tm_distill.convert import seed_student
from tm_distill.convert.calibrate import (
    CalibrationError,
    apply_fit,
    calibrate_student,
    calibration_table,
    calibration_windows,
    capture_windows,
    default_windows,
    fit_gains,
    gain_decay_parameters,
    layer_error,
    ssm_operands,
    ssm_rows,
    unit_scans,
)
from tm_distill.eval.hidden import LayerErrorStats, capture_attention_io, mixer_errors
from tm_distill.models.configuration import ATTENTION_ONLY
from tm_distill.ops import ssd_naive


def _windows(n: int = 3, t: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 97, (n, t), generator=torch.Generator().manual_seed(seed))


def test_gain_and_decay_encode_exactly_when_w_delta_is_zero():
    gains = torch.tensor([1e-6, 3e-3, 0.5, 40.0, 200.0])
    lengths = torch.tensor([2.0, 16.0, 128.0, 2048.0, 8192.0])
    dt_bias, a_log = gain_decay_parameters(gains, lengths)
    dt = F.softplus(dt_bias)
    torch.testing.assert_close(dt, gains.double(), rtol=1e-7, atol=0)
    torch.testing.assert_close(torch.exp(-torch.exp(a_log) * dt), torch.exp(-1 / lengths.double()))


def test_unit_scans_fold_the_grid_into_heads_under_gqa():
    torch.manual_seed(0)
    b, t, nq, nkv, d = 2, 40, 4, 2, 8
    x, B, C = torch.randn(b, t, nq, d), torch.randn(b, t, nkv, d), torch.randn(b, t, nq, d)
    grid = torch.tensor([2.0, 32.0, 8192.0])
    u = unit_scans(x.double(), B.double(), C.double(), grid, chunk_size=16)
    for k, length in enumerate(grid):
        ref, _ = ssd_naive(x.double(), torch.ones(b, t, nq, dtype=torch.float64),
                           torch.full((nq,), -1 / float(length), dtype=torch.float64), B.double(), C.double())
        torch.testing.assert_close(u[..., k, :].double(), ref, rtol=1e-4, atol=1e-4)


def test_fitted_mixer_computes_gain_times_unit_scan_plus_skip(tiny_teacher):
    student = seed_student(tiny_teacher, [0, 5, 9], seed=0)
    mixer = student.model.layers[1].mixer
    gains, lengths, skips = torch.tensor([0.2, 1e-6, 0.03, 1.5]), torch.tensor([4.0, 64.0, 2.0, 8192.0]), \
        torch.tensor([0.1, -0.3, 0.0, 2.0])
    apply_fit(mixer, gains, lengths, skips)
    hidden = torch.randn(2, 30, 64)
    pe = student.model.rotary_emb(hidden, position_ids=torch.arange(30)[None])
    with torch.no_grad():
        x, B, C = ssm_operands(mixer, hidden, pe)
        u = unit_scans(x, B, C, lengths[:, None], 64)[..., 0, :]
        want = mixer.o_proj((gains.view(1, 1, -1, 1) * u + skips.view(1, 1, -1, 1) * x).flatten(2))
        torch.testing.assert_close(ssm_rows(mixer, hidden, pe, 5), want[:, 5:], rtol=1e-4, atol=1e-5)
        # and the hybrid mixer itself (Memory Converter at P = 5) gives the same rows
        torch.testing.assert_close(mixer(hidden, pe)[:, 5:], want[:, 5:], rtol=1e-4, atol=1e-5)


def test_fit_gains_is_least_squares_with_nonnegative_gains():
    torch.manual_seed(0)
    feats = torch.randn(6, 500, dtype=torch.float64)  # 3 heads: 3 gain features, 3 skip features
    theta = torch.tensor([0.7, -0.4, 0.3, 0.2, -1.1, 0.5], dtype=torch.float64)
    target = theta @ feats + 0.01 * torch.randn(500, dtype=torch.float64)
    gains, skips = fit_gains(feats @ feats.T, feats @ target, 3)
    assert (gains >= 0).all() and gains[1] == 0
    free = [0, 2, 3, 4, 5]  # the constrained optimum is least squares with the negative gain removed
    ref = torch.linalg.lstsq(feats[free].T, target[:, None]).solution[:, 0]
    torch.testing.assert_close(torch.cat([gains[[0, 2]], skips]), ref, rtol=1e-6, atol=1e-8)


@pytest.fixture
def calibrated(tiny_teacher):
    student = seed_student(tiny_teacher, [0, 12, ATTENTION_ONLY], seed=3)
    record = calibrate_student(student, tiny_teacher, _windows(), heldout=_windows(2, seed=1), data="random")
    return student, record


def test_every_layer_ends_no_worse_than_a_zero_output(calibrated):
    _, record = calibrated
    assert [f.layer for f in record.layers] == [0, 1] and record.skipped == []
    for fit in record.layers:
        assert fit.error_after < 1.0 and fit.error_after < fit.error_before
        assert fit.heldout_after < fit.heldout_before
        assert all(g > 0 for g in fit.gains) and len(fit.decay_lengths) == 4


def test_reported_errors_are_the_eval_library_s(calibrated, tiny_teacher):
    student, record = calibrated
    stats = LayerErrorStats(3)
    with capture_attention_io(tiny_teacher) as acts:
        tiny_teacher(_windows(2, seed=1))
    stats.add(mixer_errors(student, acts))
    heldout = stats.summary()
    for fit in record.layers:
        assert math.isclose(heldout[fit.layer], fit.heldout_after, rel_tol=1e-3)
    assert heldout[2] is None  # the attention layer has no SSM rows


def test_calibration_keeps_teacher_exact_positions(calibrated, tiny_teacher):
    student, _ = calibrated  # min P = 0: layer 0 is pure SSM, so check a student whose min P is 12
    student = seed_student(tiny_teacher, [12, 20, ATTENTION_ONLY], seed=3)
    ids = _windows(2, seed=5)
    with torch.no_grad():
        seeded = student(ids).logits
        calibrate_student(student, tiny_teacher, _windows())
        after = student(ids).logits
        teacher = tiny_teacher(ids).logits
    assert torch.equal(after[:, :12], seeded[:, :12])
    torch.testing.assert_close(after[:, :12], teacher[:, :12], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after[:, 12:], seeded[:, 12:])


def test_calibration_is_deterministic_for_a_seed(tiny_teacher):
    states = []
    for _ in range(2):
        student = seed_student(tiny_teacher, [0, 12, 24], seed=7)
        calibrate_student(student, tiny_teacher, _windows())
        states.append(student.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_sequential_fits_on_the_calibrated_student_s_own_inputs(tiny_teacher):
    """Layer 0's input is the embedding either way; layer 1's differs once layer 0 (pure SSM) is calibrated."""
    fits = {}
    for sequential in (True, False):
        student = seed_student(tiny_teacher, [0, 12, 24], seed=3)
        fits[sequential] = calibrate_student(student, tiny_teacher, _windows(), sequential=sequential).layers
    assert fits[True][0] == fits[False][0]
    assert fits[True][1].gains != fits[False][1].gains
    # fitted on the teacher's inputs, the non-sequential fit is the better one on them
    assert fits[False][1].error_after <= fits[True][1].error_after + 1e-6


def test_default_windows_hold_4096_tokens():
    assert [default_windows(n) for n in (2048, 1000, 128, 8192)] == [2, 5, 32, 1]


def test_record_is_kept_in_the_config_and_renders(calibrated):
    student, record = calibrated
    summary = student.config.calibration
    assert summary["windows"] == 3 and summary["seq_len"] == 48 and summary["data"] == "random"
    assert [row[0] for row in summary["errors"]] == [0, 1] and "layers" not in summary
    table = calibration_table(summary)
    assert "held-out" in table and f"{record.layers[1].error_after:.3f}" in table


def test_layers_without_ssm_rows_are_left_as_seeded(tiny_teacher):
    student = seed_student(tiny_teacher, [0, 100, ATTENTION_ONLY], seed=0)
    before = student.model.layers[1].mixer.A_log.clone()
    record = calibrate_student(student, tiny_teacher, _windows())
    assert record.skipped == [1] and [f.layer for f in record.layers] == [0]
    assert torch.equal(student.model.layers[1].mixer.A_log, before)


def test_progress_shows_every_layer_and_the_time_left(tiny_teacher, capsys):
    student = seed_student(tiny_teacher, [0, 12, ATTENTION_ONLY], seed=3)
    calibrate_student(student, tiny_teacher, _windows(), heldout=_windows(1, seed=1), progress=True)
    err = capsys.readouterr().err
    assert "teacher activations" in err and "held-out activations" in err
    assert "calibrate layers: 100%" in err and "2/2 [" in err and "<00:00" in err  # elapsed<left per step
    calibrate_student(seed_student(tiny_teacher, [0, 12, ATTENTION_ONLY], seed=3), tiny_teacher, _windows())
    assert capsys.readouterr().err == ""  # quiet unless asked


def test_z_gate_is_refused(tiny_teacher):
    student = seed_student(tiny_teacher, [0, 12, 24], use_z_gate=True)
    with pytest.raises(CalibrationError, match="z gate"):
        calibrate_student(student, tiny_teacher, _windows())


def test_layer_error_matches_a_zero_output_for_zero_gain_and_skip(tiny_teacher):
    student = seed_student(tiny_teacher, [0, 12, 24], seed=0)
    mixer = student.model.layers[0].mixer
    apply_fit(mixer, torch.zeros(4), torch.full((4,), 8.0), torch.zeros(4))
    with torch.no_grad():
        mixer.o_proj.bias = None  # Llama has none; keep the zero output exactly zero
        err, ref = layer_error(student, capture_windows(tiny_teacher, _windows(), [0]), 0)
    assert math.isclose(err, ref, rel_tol=1e-4)


# ------------------------------------------------------------------------------------------------------------
def test_windows_come_from_the_training_split(smol, shakespeare_files, tmp_path):
    from tm_distill.data.tokens import build_token_dataset

    for i, f in enumerate(shakespeare_files[:6]):
        (tmp_path / f"{i}.txt").write_text(f.read_text()[:6000])
    windows, held = calibration_windows(str(tmp_path), smol.tokenizer, 64, 3, 2, heldout_fraction=0.2, seed=0)
    data = build_token_dataset(
        [(tmp_path / f"{i}.txt").read_text() for i in range(6)], smol.tokenizer, 64, heldout_fraction=0.2, seed=0)
    assert windows.shape == (3, 64) and held.shape == (2, 64)
    train = {tuple(r.tolist()) for r in data.train}
    assert all(tuple(r.tolist()) in train for r in windows)
    assert torch.equal(held, data.heldout[:2])


def test_one_document_holds_out_the_windows_after_the_calibration_ones(smol, real_text, tmp_path):
    (tmp_path / "one.txt").write_text(real_text)
    windows, held = calibration_windows(str(tmp_path / "one.txt"), smol.tokenizer, 128, 2, 1)
    assert windows.shape == (2, 128) and held.shape == (1, 128)
    assert not any(torch.equal(held[0], w) for w in windows)


@pytest.mark.parametrize("content,words", [("", "gave no text"), ("Too short to fill one window.", "no whole window")])
def test_unusable_data_names_the_source_and_the_fix(smol, tmp_path, content, words):
    bad = tmp_path / "bad.txt"
    bad.write_text(content)
    with pytest.raises(CalibrationError) as err:
        calibration_windows(str(bad), smol.tokenizer, 256, 4)
    assert str(bad) in str(err.value) and words in str(err.value) and "give at least 256 tokens" in str(err.value)


# ------------------------------------------------------------------------------------------------------------
def test_real_teacher_at_short_length(smol):
    """SmolLM2-135M, 256-token windows: every calibrated layer beats a zero output on held-out text."""
    from tm_distill.convert import parse_transpoints

    windows, held = calibration_windows("shakespeare", smol.tokenizer, 256, 2, 1)
    tps = parse_transpoints("cycle=0,32,64,128,256", 30)
    student = seed_student(smol.model, tps, seed=0)
    record = calibrate_student(student, smol.model, windows, heldout=held)
    assert record.skipped == [i for i, p in enumerate(tps) if p == 256]
    assert all(f.heldout_after < 1.0 for f in record.layers)
    assert record.mean("heldout_before") > 2.0 and record.mean("heldout_after") < 0.8
