"""Training: one recipe for pretraining and fine-tuning (`run_config.RunConfig` -> `resolve.validate`
-> `run.run`), on a DeepSpeed engine with the loop, checkpoints, schedules, EMA and early stopping.

    config.py          typed sections (optimiser, schedule, distributed, EMA, checkpoints, eval, log,
                       early stopping) and DatasetConfig
    run_config.py      RunConfig, the recipes' defaults, load_config
    resolve.py         validate(): every check before a process group; Resolved
    datasets.py        shards built on first use, label checks, the training stream, validation splits
    normalization.py   task_statistics(): the TaskStats of every task, from the train splits
    weights.py         the model a run trains (checkpoint or fresh, frozen, lr scales) and exports
    run.py             run(): the recipe
    loop.py            Trainer: micro-steps, NaN skipping, EMA, evaluation, checkpoints, TensorBoard
    validation.py      metrics reduced over ranks during training; a model's scores on a split
    early_stopping.py, ema.py, loss.py, schedule.py, rng.py, checkpoint.py, engine.py,
    deepspeed_config.py, distributed.py, data.py (EpochStream)

Only this package imports DeepSpeed, and only when a run starts (engine.py says why).
"""
