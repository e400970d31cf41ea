"""One training run with the post's recipe: `run.train`, the resumable fit, its callbacks, epoch checkpoints,
stops and time budgets, memory, data-parallel devices, the run record it leaves, and progress with an ETA."""
