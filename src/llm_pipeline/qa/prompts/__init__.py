"""QA prompts: templates.py loads a versioned set of Jinja templates (the packaged qa-v1/ folder, or one named in
config) into a PromptSet."""

from llm_pipeline.qa.prompts.templates import (
    CLOSE_TAG,
    OPEN_TAG,
    PACKAGED_DIR,
    PACKAGED_VERSION,
    PromptSet,
    defuse,
    load_prompts,
)

__all__ = ["CLOSE_TAG", "OPEN_TAG", "PACKAGED_DIR", "PACKAGED_VERSION", "PromptSet", "defuse", "load_prompts"]
