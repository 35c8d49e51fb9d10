"""`python -m qtraderd.training <train|job> ...`: the job process's entry point.

`train` (qtraderd.training.cli) trains, exports and deploys models for `qtraderd train`;
`job` (qtraderd.training.job) is one retraining job for the daemon's learner. This is the
only process that imports torch, xgboost and lightgbm.
"""

from __future__ import annotations

import argparse
import sys

from qtraderd.runtime.process import die_with_parent
from qtraderd.training.cli import add_train_arguments, train_main
from qtraderd.training.job import job_main


def main(argv: list[str] | None = None) -> int:
    """`python -m qtraderd.training <train|job> ...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        return train_main(argv[1:])
    if argv and argv[0] == "job":
        return job_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m qtraderd.training",
                                     description="qtraderd learner jobs (separate process).")
    sub = parser.add_subparsers(dest="job", required=True)
    add_train_arguments(sub.add_parser("train", help="train, export and deploy models"))
    try:
        parser.parse_args(argv)  # prints usage / help; a valid `train` never gets here
    except SystemExit as exc:
        return int(exc.code or 0)
    return 2  # pragma: no cover


if __name__ == "__main__":
    die_with_parent()  # a job nobody waits for must not go on to write models
    raise SystemExit(main())
