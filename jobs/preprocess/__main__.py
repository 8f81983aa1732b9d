"""``python -m jobs.preprocess CONFIG --out DIR``: the same command as ``hepscan preprocess``."""

from jobs.preprocess.cli import preprocess_command

if __name__ == "__main__":
    preprocess_command()
