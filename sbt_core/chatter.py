"""Library chatter off the terminal: what transformers, datasets, DeepSpeed, TRL and torch print (progress bars,
deprecation warnings, DeepSpeed's accelerator line) goes to a log file, or nowhere, while `sbt`'s own lines, the
stages' progress and every error stay on the terminal.

`quiet_libraries()` is called where a stage runs under a flow (which shows its own progress); the stage
commands (`sbt train`, ...) keep the Trainer's progress bar, which is their progress display.
"""

from __future__ import annotations

import logging
import os
import sys

# Loggers whose records below ERROR belong in the log file, not on the terminal.
LIBRARIES = ("transformers", "datasets", "huggingface_hub", "accelerate", "trl", "deepspeed", "DeepSpeed", "torch",
             "py.warnings", "numba", "filelock", "fsspec", "s3fs", "botocore", "aiobotocore", "urllib3", "httpx")
_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "warning"}


def accelerator_env() -> None:
    """Name DeepSpeed's accelerator where no GPU is visible, so that importing it (through accelerate and the
    Trainer) does not print "Setting accelerator to CPU" on stdout; an explicit DS_ACCELERATOR stands."""
    if "DS_ACCELERATOR" not in os.environ and "deepspeed" not in sys.modules:
        import torch

        if not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"


class _LibraryFilter(logging.Filter):
    """Lets through records of our own and Prefect's loggers, and errors of any."""

    def filter(self, record: logging.LogRecord) -> bool:
        top = record.name.split(".")[0]
        return record.levelno >= logging.ERROR or (top not in LIBRARIES and record.name not in LIBRARIES)


def quiet_libraries(log_file: str | None = None) -> None:
    """Progress bars of transformers, datasets and the hub off; Python warnings through logging; library records
    below ERROR kept off the terminal's handlers and, with `log_file`, written there (INFO and up, all loggers).
    Idempotent: a second call adds no handler."""
    for key, value in _ENV.items():
        os.environ.setdefault(key, value)
    accelerator_env()
    import datasets
    import huggingface_hub.utils
    import transformers.utils.logging

    # Imported now (each reads its environment at import and adds its own terminal handler then), so switched off
    # here whether or not something imported it first.
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_warning()
    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()
    logging.captureWarnings(True)
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler) and \
                not any(isinstance(f, _LibraryFilter) for f in handler.filters):
            handler.addFilter(_LibraryFilter())
    for name in LIBRARIES:  # DeepSpeed's logger prints to stdout through its own handler and does not propagate
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True
    if log_file and not any(isinstance(h, logging.FileHandler) and h.baseFilename == os.path.abspath(log_file)
                            for h in root.handlers):
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
