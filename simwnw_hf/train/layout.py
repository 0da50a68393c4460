"""Names of the files a training run dir holds (next to its ``checkpoint-<step>/`` folders, named in
:mod:`simwnw_hf.train.checkpoint`). Readers of run dirs (Hub record, eval, upload) import them from here."""

RUN_CONFIG_FILE = "run_config.json"   # TrainConfig.to_dict() of the run
METRICS_FILE = "metrics.jsonl"        # one line per --log-every steps
SUMMARY_FILE = "summary.json"         # the run summary, written when training ends
EVAL_FILE = "eval.json"               # the entry point's final evaluation
