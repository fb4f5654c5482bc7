"""The code sandbox: run untrusted Python programs under bubblewrap and classify how they ended.

``sandbox_mode()`` picks the mode once per run (refusing to run unconfined unless asked),
``run_program`` runs one program and ``run_programs``/``run_batch`` run many on a bounded pool.
"""

from steerlab.execution.pool import ExecBatch, run_batch, run_programs, sandbox_mode
from steerlab.execution.sandbox import MODES, STATUSES, ExecResult, Limits, run_program

__all__ = [
    "MODES",
    "STATUSES",
    "ExecBatch",
    "ExecResult",
    "Limits",
    "run_batch",
    "run_program",
    "run_programs",
    "sandbox_mode",
]
