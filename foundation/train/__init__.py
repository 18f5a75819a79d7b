"""Training: DeepSpeed engine, loop, checkpoints, schedules, EMA, metrics (`foundation pretrain`).

Only this package imports DeepSpeed (lazily, inside functions), so importing it stays cheap.
"""
