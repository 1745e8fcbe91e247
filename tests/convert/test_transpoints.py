"""The TransPoint grammar: every form, and errors that point at the offending part."""

from __future__ import annotations

import pytest

from tm_distill.convert import TransPointSpecError, describe_transpoints, parse_transpoints, scale_cycle
from tm_distill.models import ATTENTION_ONLY as A


@pytest.mark.parametrize("spec,want", [
    ("all=16", [16] * 6),
    ("cycle=0,8,16,32", [0, 8, 16, 32, 0, 8]),
    ("attn=0,3;ssm=rest", [A, 0, 0, A, 0, 0]),
    ("attn=1;cycle=4,8", [4, A, 4, 8, 4, 8]),
    ("attn=5;all=7", [7, 7, 7, 7, 7, A]),
    ("0,1,2,attn,4,5", [0, 1, 2, A, 4, 5]),
    (" attn ", [A] * 6),
    ("ssm", [0] * 6),
])
def test_forms(spec, want):
    assert parse_transpoints(spec, 6) == want


@pytest.mark.parametrize("spec,fragment", [
    ("every=4", "unknown key 'every'"),
    ("all=-3", "-3"),
    ("cycle=8,-1", "-1"),
    ("1,2,3", "lists 3 TransPoints but the model has 6 layers"),
    ("attn=0,9;ssm=rest", "layer index 9"),
    ("attn=0,2", "add ';ssm=rest'"),
    ("attn=0;ssm=most", "'ssm=' takes only 'rest'"),
    ("all=8;cycle=1,2", "sets the schedule twice"),
    ("all=eight", "'eight'"),
    ("cycle=1,,2", "empty entry"),
    ("", "empty TransPoint spec"),
    ("auto:kv=0.5", "tm-distill plan"),
])
def test_errors_name_the_bad_part(spec, fragment):
    with pytest.raises(TransPointSpecError) as err:
        parse_transpoints(spec, 6)
    assert fragment in str(err.value)


def test_describe_and_scale_cycle():
    assert describe_transpoints([0, 128, A]) == "0,128,attn"
    assert scale_cycle(8192) == "cycle=0,128,256,512,1024,2048,4096,8192"
    assert parse_transpoints(scale_cycle(256), 30)[:8] == [0, 4, 8, 16, 32, 64, 128, 256]


def test_real_teacher_layer_count(smol):
    n = smol.model.config.num_hidden_layers
    assert parse_transpoints("attn=0,8,16,24;ssm=rest", n).count(A) == 4
    with pytest.raises(TransPointSpecError, match="30 layers"):
        parse_transpoints(",".join(["8"] * 29), n)
