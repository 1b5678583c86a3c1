"""Fine-tuning from corrections: the loop (``finetune``), its configuration (``config``), data and split
(``data``), the teacher-forced step (``step``), losses, which weights train (``lora``), resumable trainer
state (``state``) and per-level validation (``validation``).

May import: cores.evaluation, cores.inference, cores.checkpoints, cores.modeling, cores.errors
"""
