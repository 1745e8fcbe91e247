"""The student-vs-teacher report behind `tm-distill eval` (see docs/eval.md).

``metrics`` (perplexity, KL, top-1 by TransPoint bucket), ``hidden`` (per-layer error on the teacher's
inputs), ``retrieval`` (passkey, phonebook), ``lmeval`` (optional lm-evaluation-harness), ``speed``,
``report`` / ``plots`` (files on disk), and ``api`` which ties them together. Importing this package
loads neither matplotlib nor lm_eval.
"""

from .api import EvalInputError, EvalOptions, evaluate, run_eval

__all__ = ["EvalInputError", "EvalOptions", "evaluate", "run_eval"]
