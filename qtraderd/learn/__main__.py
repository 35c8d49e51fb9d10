"""`python -m qtraderd.learn ...`: the learner process entry point (see cli.py)."""

from qtraderd.learn.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
