"""Training-loop pieces shared by pretraining and the evaluations: the loop itself (loop.py),
schedules, checkpoints, pre-emption, logging."""
