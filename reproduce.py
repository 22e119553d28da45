"""Reproduce every LLM figure of the paper, and the compression valley beside them, on one model with one model
load; writes SAVEDIR/<model>/index.md."""
from lib.cli import reproduce_main

if __name__ == "__main__":
    reproduce_main()
