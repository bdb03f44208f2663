"""Training's machinery (train.py holds the recipe): device and precision, DDP, randomness and stop
signals (runtime), the checkpoint format, resume, the schedule's rules, EMA, a run's records."""
