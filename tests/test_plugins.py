"""Extension by registration, from outside the package: the README's candidate-kind example word for word, an
installed package's entry points, and a QA backend and a dedup method of a user's own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from llm_pipeline.config import load_config
from llm_pipeline.errors import ConfigError
from llm_pipeline.records import BenchmarkItem, Document

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "test.yaml"


def readme_example() -> str:
    """The python block that follows the README's `<!-- plugin-example -->` marker."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- plugin-example -->\n```python\n(.*?)```", readme, re.S)
    assert match, "README lost its plug-in example"
    return match.group(1)


@pytest.fixture
def user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of the user's own modules, on the path the way a user's project is."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def _config(tmp_path: Path, **sections: object) -> Path:
    raw = yaml.safe_load(CONFIG.read_text())
    raw.update(sections)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_readme_candidate_kind_plugs_in_from_outside(tmp_path: Path, user_folder: Path) -> None:
    from llm_pipeline.evaluation import evaluate_candidates

    (user_folder / "my_candidates.py").write_text(readme_example())
    path = _config(
        tmp_path,
        plugins=["my_candidates"],
        evaluation={"candidates": [{"name": "lead", "kind": "lead-sentence", "options": {"words": 4}}]},
    )
    config = load_config(path)
    items = [
        BenchmarkItem(
            id="b1",
            question="What does a DC charger deliver?",
            answer="direct current",
            context="A DC charger delivers direct current. It is fast.",
            category="technical",
            difficulty="easy",
            source_document_id="d1",
        )
    ]
    result = evaluate_candidates(items, config.evaluation)
    [prediction] = result.predictions
    assert prediction.candidate == "lead" and prediction.prediction == "A DC charger delivers"
    assert result.summary["lead"]["kind"] == "lead-sentence"


def test_an_unknown_kind_fails_validation_naming_the_field(tmp_path: Path) -> None:
    path = _config(tmp_path, evaluation={"candidates": [{"name": "x", "kind": "no-such-kind"}]})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [(field, message)] = info.value.problems
    assert field == "evaluation.candidates.0.kind" and "retrieval" in message and "no-such-kind" in message


def test_a_plugin_that_cannot_be_imported_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, plugins=["no_such_module_anywhere"]))
    assert info.value.problems[0][0] == "plugins.0" and "no_such_module_anywhere" in info.value.problems[0][1]


def test_an_installed_package_registers_through_entry_points(tmp_path: Path) -> None:
    """A package with a dist-info on the path (what `pip install` leaves), no `plugins:` line: the command sees it."""
    site = tmp_path / "site"
    (site / "acme_eval").mkdir(parents=True)
    (site / "acme_eval" / "__init__.py").write_text(readme_example().replace('register("lead-sentence")', "register"))
    info = site / "acme_eval-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-eval\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[llm_pipeline.candidates]\nacme-lead = acme_eval:LeadSentence\n")
    env = {**os.environ, "PYTHONPATH": str(site)}

    def validate(kind: str) -> subprocess.CompletedProcess:
        path = _config(tmp_path, evaluation={"candidates": [{"name": "lead", "kind": kind}]})
        command = [sys.executable, "-m", "flows.cli", "validate", str(path)]
        return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)

    ok = validate("acme-lead")
    assert ok.returncode == 0, ok.stderr
    bad = validate("acme-leed")
    assert bad.returncode == 2 and "evaluation.candidates.0.kind" in bad.stderr and "acme-lead" in bad.stderr


BACKEND_AND_METHOD = textwrap.dedent(
    """
    import json

    from llm_pipeline.dedup.methods import DEDUP_METHODS
    from llm_pipeline.qa.backends import QA_BACKENDS, Completion
    from llm_pipeline.qa.checkpoint import Usage
    from llm_pipeline.records import DuplicateCluster


    @DEDUP_METHODS.register("same-first-word")
    def same_first_word(documents, config):
        first = {}
        clusters = []
        for document in documents:
            word = document.text.split()[0].lower()
            if word in first:
                clusters.append(DuplicateCluster(cluster_id=f"w-{document.id}", method="same-first-word",
                                                 kept=first[word], members=[first[word], document.id], similarity=1.0))
            else:
                first[word] = document.id
        return clusters


    @QA_BACKENDS.register("canned")
    class Canned:
        name, model = "canned", "canned-1"
        sent = 0

        def __init__(self, config, api_key):
            self.config = config

        async def complete_many(self, jobs):
            for job in jobs:
                Canned.sent += 1
                sentence = job.chunk.text.split(". ")[0].rstrip(".")
                pairs = [{"question": f"What does the text say about {sentence.split()[0]} here?",
                          "answer": sentence}]
                yield job, Completion(json.dumps({"pairs": pairs}), "stop", Usage(prompt_tokens=10,
                                      completion_tokens=5), 0.0)

        async def aclose(self):
            pass
    """
)


def test_a_dedup_method_and_a_qa_backend_of_ones_own(tmp_path: Path, user_folder: Path) -> None:
    from llm_pipeline.dedup import deduplicate
    from llm_pipeline.qa import generate_qa

    (user_folder / "my_extensions.py").write_text(BACKEND_AND_METHOD)
    path = _config(
        tmp_path,
        plugins=["my_extensions"],
        dedup={"method": "same-first-word"},
        qa={"backend": "canned", "model_name": "canned-1", "questions_per_doc": 1, "min_question_words": 3},
    )
    config = load_config(path)
    documents = [
        Document(id="a", text="Chargers deliver direct current to the battery quickly."),
        Document(id="b", text="Chargers at home deliver alternating current overnight."),
        Document(id="c", text="Tariffs vary by operator and by the time of day."),
    ]
    deduped = deduplicate(documents, config.dedup)
    assert [d.id for d in deduped.kept] == ["a", "c"] and deduped.removed_by_method == {"same-first-word": 1}
    qa = generate_qa(deduped.kept, config.qa, checkpoint_dir=tmp_path / "journal")
    assert qa.backend == "canned" and qa.requests["sent"] == 2 and len(qa.pairs) == 2
    again = generate_qa(deduped.kept, config.qa, checkpoint_dir=tmp_path / "journal")
    assert again.requests["sent"] == 0 and again.requests["reused"] == 2  # the journal holds for a plug-in too
