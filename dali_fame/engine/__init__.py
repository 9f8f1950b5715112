"""Training-loop pieces shared by pretraining and the evaluations: schedules, checkpoints, logging."""
