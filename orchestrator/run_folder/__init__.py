"""A training run's folder: the one module that names, writes and reads the files in it.

    <checkpoint.storage_path>/<run name>/       a local folder or s3://
        mlflow_run.json                         the run's MLflow run id, written when the run starts
        checkpoint_00001000/                    every checkpoint.every iterations (Ray Train keeps
                                                checkpoint.num_to_keep of them)
            state.pt                            weights, optimizer, scheduler, iteration, the data
                                                position of every canonical partition (merged from
                                                all ranks), the data plan, RNG
            config.yaml                         the resolved config
            vocab.json                          the shards' class vocabulary
            eval.json                           metrics and per-class AP, when it evaluated there
            unsent_metrics.json                 metric values MLflow could not take yet (last one only)
            complete.json                       written last: the size and sha256 of every file above
        best_00000800/                          with checkpoint.keep_best: the model of the best
                                                evaluation so far (state.pt holds its weights and
                                                iteration; config, vocabulary, eval.json, complete.json)
        best.json                               which best_* folder that is, by which metric, its value

A checkpoint is complete when its complete.json is there and every file it lists has the size and
checksum it records; resuming (`--resume` or Ray's restart after a failure) continues from the newest
complete checkpoint in the folder itself, whatever Ray's own record says (its snapshot can lag the
folders on storage when the driver dies). complete.json is written last on the worker's disk, but
Ray's upload copies a folder's files in parallel: on storage it can arrive before state.pt, and a
host cut off mid-upload leaves it beside a missing file. Such a checkpoint never finished; one whose
files are there but wrong was finished and then damaged.

A logged MLflow model carries config.yaml, vocab.json and weights.pt (the state dict alone, which
loads with `torch.load(weights_only=True)`) as its artifact `model_files/` (`extra_files/` in models
logged by a maskx before the pyfunc).

Functions here take the bare model, never its DistributedDataParallel wrapper (whose state dict
names every tensor `module.*`).

The package is that one module in rooms: `layout.py` names the files, and each file's writer and
reader sit together (`claim.py`, `checkpoint.py`, `best.py`, `model_files.py`, `resume.py`);
callers use `run_folder.<name>` from here.
"""
from .best import BestModel, local_best, read_best, write_best
from .checkpoint import (TrainState, checkpoint_contents, eval_path, load_state, local_checkpoint, read_config_and_vocab,
                         read_evaluation, read_unsent_metrics, restore, save_state, write_checkpoint,
                         write_checkpoint_to_scratch)
from .claim import RECORD_WAIT_S, read_mlflow_run, write_mlflow_run
from .layout import (BEST_FILE, CHECKPOINT_PREFIX, COMPLETE_FILE, CONFIG_FILE, EVAL_FILE, MLFLOW_RUN_FILE, STATE_FILE,
                     UNSENT_METRICS_FILE, VOCAB_FILE, WEIGHTS_FILE, checkpoint_iteration, checkpoint_name, new_run_name,
                     run_folder)
from .model_files import MLFLOW_SCHEMES, MODEL_FILES_ARTIFACT, load_weights, logged_model_files, model_files
from .resume import UnfinishedCheckpoint, load_complete_state, resume_state

__all__ = ["BEST_FILE", "CHECKPOINT_PREFIX", "COMPLETE_FILE", "CONFIG_FILE", "EVAL_FILE", "MLFLOW_RUN_FILE",
           "MLFLOW_SCHEMES", "MODEL_FILES_ARTIFACT", "RECORD_WAIT_S", "STATE_FILE", "UNSENT_METRICS_FILE", "VOCAB_FILE",
           "WEIGHTS_FILE", "BestModel", "checkpoint_contents", "checkpoint_iteration", "checkpoint_name",
           "eval_path", "load_complete_state", "load_state", "load_weights", "local_best", "local_checkpoint",
           "logged_model_files", "model_files", "new_run_name", "read_best", "read_config_and_vocab",
           "read_evaluation", "read_mlflow_run", "read_unsent_metrics", "restore", "resume_state",
           "run_folder", "save_state", "TrainState", "UnfinishedCheckpoint", "write_best", "write_checkpoint",
           "write_checkpoint_to_scratch", "write_mlflow_run"]
