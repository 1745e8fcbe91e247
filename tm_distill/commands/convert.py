"""`tm-distill convert`: turn a Llama-family teacher into a seeded TransMamba student checkpoint."""

from __future__ import annotations

import click

from ..checkpoint import OutputInTheWay, read_metadata
from ..conversion import convert as convert_teacher
from ..convert.calibrate import DEFAULT_CALIBRATION_DATA, calibration_table
from ..convert.transpoints import describe_transpoints
from ..ops import FEATURE_MAPS
from ..runtime import DTYPES


@click.command("convert")
@click.argument("teacher")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--transpoints", "spec", required=True, metavar="SPEC",
              help="Per-layer TransPoints: all=N, cycle=P0,P1,..., attn=L0,L1,...;ssm=rest, a per-layer list, "
                   "attn, ssm, or auto:kv_budget=25% (planned first on the --calibrate data or the shipped corpus, "
                   "as `tm-distill plan` does).")
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default=None,
              help="Dtype of the saved student [default: the teacher's: its config's, or bfloat16 for a quantized "
                   "GGUF such as smollm2-135m].")
@click.option("--force", is_flag=True, help="Replace OUT if it exists (only once the new checkpoint is complete).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the SSM parameters' init.")
@click.option("--device", default="cpu", show_default=True, help="Where to seed (cpu, cuda, cuda:1, ...).")
@click.option("--z-gate/--no-z-gate", default=False, help="Gate + gated RMSNorm on SSM tokens (new z projection).")
@click.option("--conv/--no-conv", default=False, help="Causal depthwise conv1d on x, B, C (identity init).")
@click.option("--feature-map", type=click.Choice(list(FEATURE_MAPS)), default="identity",
              show_default=True, help="Activation on B and C.")
@click.option("--c-scale/--no-c-scale", default=False, help="Scale C by 1/sqrt(head_dim), the softmax scale.")
@click.option("--ssm-rope/--no-ssm-rope", default=False, help="Use RoPE-rotated q, k as C, B.")
@click.option("--calibrate", "calibrate", is_flag=False, flag_value=DEFAULT_CALIBRATION_DATA, default=None,
              metavar="[DATA]",
              help="Fit each layer's SSM (decay, gain, D per head) to the teacher's attention on DATA's training "
                   f"split (default {DEFAULT_CALIBRATION_DATA}: the shipped corpus): a corpus name, "
                   ".txt/.jsonl/.parquet file, folder or dataset. Closed form; a bar shows each layer and the time "
                   "left (SmolLM2-135M: about 3 minutes on 2 CPU cores).")
@click.option("--calibrate-windows", type=click.IntRange(min=1), default=None,
              help="Calibration windows [default: 4096 tokens' worth, 2 of 2048].")
@click.option("--calibrate-seq-len", type=click.IntRange(min=2), default=None,
              help="Tokens per calibration window [default: min(2048, the teacher's context)].")
@click.option("--calibrate-heldout", type=click.IntRange(min=0), default=1, show_default=True,
              help="Held-out windows (never fitted) on which the before/after errors are also measured.")
def convert(teacher, out, spec, dtype, force, seed, device, z_gate, conv, feature_map, c_scale, ssm_rope,
            calibrate, calibrate_windows, calibrate_seq_len, calibrate_heldout):
    """Convert TEACHER into a TransMamba student saved at OUT (a Hugging Face folder).

    TEACHER is a local HF folder, a hub id (org/name), a .gguf file, or `smollm2-135m` (the shipped
    SmolLM2-135M-Instruct). Every layer keeps the teacher's weights; tokens before the layer's TransPoint
    run attention, later ones the SSM. The checkpoint loads with AutoModelForCausalLM after
    `import tm_distill`; nothing is written if conversion fails.

    \b
    Examples:
      tm-distill convert smollm2-135m runs/student --transpoints cycle=0,64,128,256
      tm-distill convert smollm2-135m runs/teacher-copy --transpoints attn
      tm-distill convert ./Llama-3.2-1B runs/l1b --transpoints "attn=0,8;ssm=rest" --dtype bfloat16
      tm-distill convert model.gguf runs/s --transpoints all=512 --z-gate --conv --force
      tm-distill convert smollm2-135m runs/c --transpoints cycle=0,32,64,128,256,512,1024,2048 --calibrate
      tm-distill convert smollm2-135m runs/c --transpoints cycle=0,64,128,256 --calibrate=my_text.txt
      tm-distill convert smollm2-135m runs/a --transpoints auto:kv_budget=25%
    """
    options = dict(use_z_gate=z_gate, use_conv=conv, bc_feature_map=feature_map, ssm_c_scale=c_scale,
                   ssm_rope=ssm_rope)
    try:
        path = convert_teacher(teacher, out, spec, dtype=dtype, force=force, seed=seed, device=device,
                               calibrate=calibrate, calibrate_windows=calibrate_windows,
                               calibrate_seq_len=calibrate_seq_len, calibrate_heldout=calibrate_heldout, **options)
    except OutputInTheWay as err:  # the library's message names force=True; here the flag is --force
        raise click.ClickException(f"output {err.path} already exists: pass --force to replace it") from err
    meta = read_metadata(path)
    click.echo(f"student written to {path}")
    click.echo(f"  teacher:     {meta['teacher']['source']} ({meta['teacher']['model_type']})")
    if meta.get("transpoint_explanation"):
        click.echo(meta["transpoint_explanation"])
    click.echo(f"  transpoints: {spec} -> {describe_transpoints(meta['transpoints'])}")
    click.echo(f"  dtype:       {meta['dtype']}" + (" (the teacher's)" if dtype is None else ""))
    if meta.get("calibration"):
        click.echo(calibration_table(meta["calibration"]))
    click.echo(f"next: tm-distill generate {path} --chat --prompt \"Hello!\"   |   tm-distill inspect {path}")
