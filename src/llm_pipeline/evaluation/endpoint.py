"""The `endpoint` candidate kind: a model behind an OpenAI-compatible server, asked through QA generation's
client, limits and error policy."""

from __future__ import annotations

from collections.abc import Sequence

from llm_pipeline.config import CandidateConfig
from llm_pipeline.errors import DataValidationError
from llm_pipeline.evaluation.candidates import CANDIDATE_KINDS, answer_messages, first_line


@CANDIDATE_KINDS.register("endpoint")
class EndpointCandidate:
    """An OpenAI-compatible endpoint, through the QA stage's client, limits and error policy. An item the server
    refuses for what it holds (a 4xx: a context too long for the model, a provider's content filter) is answered
    empty, so it scores as wrong, and is counted with its reason (`refused`); a server that stays down, or refuses
    the key, fails the candidate."""

    def __init__(self, config: CandidateConfig):
        from llm_pipeline.config import QAConfig, Secrets

        self.name = config.name
        self.refused: dict[int, str] = {}  # item index -> why the server refused it (a 4xx: not sent again)
        key = Secrets().openai_api_key
        self.api_key = key.get_secret_value() if key else None
        self.qa_config = QAConfig(
            backend="openai",
            base_url=config.base_url,
            model_name=config.model,
            concurrency=config.concurrency,
            requests_per_minute=config.requests_per_minute,
            max_tokens=max(16, config.max_new_tokens),
            temperature=0.0,
            response_format="text",
        )

    def answer(self, questions: Sequence[str], contexts: Sequence[str]) -> list[str]:
        from llm_pipeline.aio import run_sync

        return run_sync(self._answer(list(questions), list(contexts)))

    async def _answer(self, questions: list[str], contexts: list[str]) -> list[str]:
        from llm_pipeline.qa.backends import Job
        from llm_pipeline.qa.chunking import Chunk
        from llm_pipeline.qa.openai_backend import OpenAIBackend
        from llm_pipeline.records import Document

        backend = OpenAIBackend(
            self.qa_config,
            self.api_key,
            least_reply_tokens=16,  # an answer is a phrase
            too_long=f"the benchmark item's context is too long for {self.name}'s model: serve it with a longer one",
        )
        jobs = [
            Job(
                key=str(i),
                document=Document(id=str(i), text=c),
                chunk=Chunk(0, 1, c),
                messages=answer_messages(q, c),
                n=1,
            )
            for i, (q, c) in enumerate(zip(questions, contexts, strict=True))
        ]
        answers: list[str] = [""] * len(jobs)
        self.refused = {}
        try:
            async for job, outcome in backend.complete_many(jobs):
                if isinstance(outcome, DataValidationError):  # this item refused for what it holds: scored empty
                    self.refused[int(job.key)] = str(outcome)
                    continue
                if isinstance(outcome, BaseException):
                    raise outcome  # still failing after the policy's tries: the candidate fails, the others go on
                answers[int(job.key)] = first_line(outcome.text)
        finally:
            await backend.aclose()
        return answers
