"""`python -m llm_pipeline.engine.ray_driver JOB ANSWER`: the Ray driver of a load-and-deduplicate stage, in a
process of its own (see ray_dedup.load_and_deduplicate for why)."""

import sys
from pathlib import Path

from llm_pipeline.engine.ray_dedup import drive

if __name__ == "__main__":
    drive(Path(sys.argv[1]), Path(sys.argv[2]))
