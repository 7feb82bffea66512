"""`python -m llm_pipeline.engine.ray_driver JOB ANSWER`: a Ray driver in a process of its own (engine/driver.py
says why)."""

import sys
from pathlib import Path

from llm_pipeline.engine.driver import drive

if __name__ == "__main__":
    drive(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
