"""The operator's view, in a real browser (Playwright driving Chromium) against the compose stack: log in, see the
pools, queues, deployments with their schedules and the automations, open a finished run, its report artifact with
every chart loaded, and report.html from the artifact's link. On a failure the page is saved as a screenshot in
test-artifacts/ui/. With UI_SCREENSHOT_DIR set (`make screenshots`), the pages the README shows are saved there.

Chromium: Playwright's own download needs the internet; where it cannot (as here), Debian's `chromium` package
is used through `executable_path` (CHROMIUM names another binary). `make test` installs it where it can.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_pipeline.config import load_config
from llm_pipeline.stages import PIPELINE, STAGES
from tests.conftest import RetryingTransport, wait_until

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = ROOT / "configs" / "test.yaml"  # what `make run-test` runs
FAILURE_SHOTS = ROOT / "test-artifacts" / "ui"
POOLS = ("llm-pipeline-pool", "llm-pipeline-gpu-pool", "llm-pipeline-docker-pool")
DEPLOYMENTS = (
    "test-pipeline",
    "ev-charging-pipeline",
    "general-pipeline",
    "evaluate-models",
    "health-check",
    "test-pipeline-docker",
)
AUTOMATIONS = (
    "llm-pipeline: flow run failed or crashed",
    "llm-pipeline: flow run running too long",
    "llm-pipeline: flow run waiting too long",
    "llm-pipeline: health threshold crossed",
    "llm-pipeline: crashed run resubmitted",
    "llm-pipeline: crash zombie flow runs",
    "llm-pipeline: crash runs stuck pending",
    "llm-pipeline: resubmit crashed flow runs",
)
SCHEDULE_TIMEZONE = "UTC"  # the stack's PIPELINE_SCHEDULE_TIMEZONE (the .env.example default the tests use)
pytestmark = pytest.mark.slow


def chromium_path() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("CI needs Chromium for the browser tests: `make test` installs Debian's chromium")
        pytest.skip(reason="no Chromium here: `apt-get install chromium` (or set CHROMIUM=/path/to/chrome)")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser, request) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900}, timezone_id=SCHEDULE_TIMEZONE)
    opened = context.new_page()
    yield opened
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        FAILURE_SHOTS.mkdir(parents=True, exist_ok=True)
        for number, tab in enumerate(context.pages):
            tab.screenshot(path=str(FAILURE_SHOTS / f"{request.node.name}-{number}.png"), full_page=True)
    context.close()


def ui(stack: dict) -> str:
    return f"http://127.0.0.1:{stack['port']}"


def log_in(page: Any, stack: dict, auth: str | None = None) -> None:
    """The UI's own login form takes the whole auth string (user:password); a right one lands on the dashboard."""
    page.goto(ui(stack) + "/v2/login", wait_until="domcontentloaded")
    field = page.locator("input[type=password]")
    field.wait_for(timeout=60_000)
    field.fill(auth or stack["auth"])
    page.get_by_role("button", name="Login").click()
    if auth is None:
        page.wait_for_url(lambda url: "/login" not in url, timeout=60_000)


def visit(page: Any, url: str, expect: str, timeout_ms: float = 30_000) -> str:
    """Go to a page and wait until its text shows `expect` (the UI renders after its API calls return)."""
    page.goto(url, wait_until="networkidle")
    page.get_by_text(expect, exact=False).first.wait_for(timeout=timeout_ms)
    return page.inner_text("body")


def text_matching(page: Any, pattern: str, timeout_ms: float = 30_000) -> str:
    """Wait until the page's text matches `pattern` (a regex both Python and JavaScript read alike), then return it.
    Where a word is also a tab's name, waiting for the word alone returns before the part that counts has rendered
    (Playwright's text match ignores case: "Task runs" matched the tab "Task Runs" before the count "9 Task runs")."""
    page.wait_for_function("p => new RegExp(p).test(document.body.innerText)", arg=pattern, timeout=timeout_ms)
    return page.inner_text("body")


def shoot(page: Any, name: str) -> None:
    folder = os.environ.get("UI_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"))


def api_client(stack: dict) -> httpx.Client:
    """The stack's API as a script calls it, retried on 429/502/503 as Prefect's own client is."""
    return httpx.Client(auth=tuple(stack["auth"].split(":", 1)), timeout=10, transport=RetryingTransport())


def listed(api: httpx.Client, url: str, body: dict) -> list | None:
    """A filter's list, or None (read again) while the API answers something else: under load the stack's API
    answered an error object twice in full suites (a deployments filter, then an artifacts filter, 2026-12-07),
    status not kept; now each such answer is printed, in a failure's captured output."""
    reply = api.post(url, json=body)
    found = reply.json() if reply.headers.get("content-type", "").startswith("application/json") else None
    if reply.status_code == 200 and isinstance(found, list):
        return found
    print(f"{url}: {reply.status_code} {reply.text[:300]!r}")  # in the failure's captured output
    return None


def test_a_wrong_password_shows_the_login_again(page, stack, deployed) -> None:
    user = stack["auth"].split(":", 1)[0]
    log_in(page, stack, auth=f"{user}:not-the-password")
    page.get_by_text("Invalid credentials").wait_for(timeout=30_000)
    page.goto(ui(stack) + "/v2/work-pools", wait_until="networkidle")  # and no page behind it opens either
    page.locator("input[type=password]").wait_for(timeout=30_000)
    assert "/login" in page.url
    assert "llm-pipeline-pool" not in page.inner_text("body")


def test_pools_and_their_queues(page, stack, deployed) -> None:
    log_in(page, stack)
    text = visit(page, ui(stack) + "/v2/work-pools", "llm-pipeline-gpu-pool")
    assert all(pool in text for pool in POOLS)
    shoot(page, "ui-work-pools")
    for pool in POOLS:
        visit(page, f"{ui(stack)}/v2/work-pools/work-pool/{pool}?tab=Work%20Queues", "Work Queues")
        page.locator("tr", has_text="normal").first.wait_for(timeout=30_000)
        # the queues table: name, concurrency limit, priority, status
        rows = [row.split("\t") for row in page.locator("tr").all_inner_texts()]
        # a queue's name cell may carry a badge under it (its late runs): its first line is the name
        found = {c[0].split("\n")[0].strip(): (c[1].strip(), c[2].strip()) for c in rows[1:] if len(c) >= 3}
        expected = {"high": ("2", "1"), "normal": ("5", "2"), "low": ("10", "3")}
        assert {name: found.get(name) for name in expected} == expected, (pool, found)


def test_deployments_with_their_schedules(page, stack, deployed) -> None:
    log_in(page, stack)
    text = visit(page, ui(stack) + "/v2/deployments?limit=25", "ev-charging-pipeline")
    assert all(name in text for name in DEPLOYMENTS), text[:2000]
    shoot(page, "ui-deployments")
    with api_client(stack) as api:
        found = wait_until(lambda: listed(api, f"{ui(stack)}/api/deployments/filter", {}), 60, "the deployments")
    ids = {d["name"]: d["id"] for d in found}
    # The schedule as the UI words it, and the next run at that hour in the configured zone (the stack's default,
    # UTC; the browser context shows times in it).
    schedules = {
        "ev-charging-pipeline": ("At 03:00 AM", "03:00:00 AM"),
        "general-pipeline": ("At 02:00 AM, only on Sunday", "02:00:00 AM"),
        "health-check": ("Every hour", ":00:00"),
    }
    for name, (wording, next_run) in schedules.items():
        visit(page, f"{ui(stack)}/v2/deployments/deployment/{ids[name]}", wording)
        page.get_by_role("tab", name="Upcoming").click()
        page.get_by_text(next_run, exact=False).first.wait_for(timeout=30_000)
        detail = page.inner_text("body")
        assert wording in detail and next_run in detail, (name, detail[:3000])


def test_automations(page, stack, deployed) -> None:
    log_in(page, stack)
    text = visit(page, ui(stack) + "/v2/automations", AUTOMATIONS[0])
    assert all(name in text for name in AUTOMATIONS)


def test_a_finished_run_its_report_and_every_chart(page, browser, stack, test_run) -> None:
    log_in(page, stack)
    page.goto(f"{ui(stack)}/v2/runs/flow-run/{test_run}", wait_until="networkidle")
    text = text_matching(page, r"\b\d+\s+Task runs")
    # a task per stage, and one more for each stage handed to the GPU pool (its subflow run shows as a task run)
    handed_off = sum(1 for stage in PIPELINE if stage.runs_on_pool(load_config(TEST_CONFIG)))
    assert re.search(rf"\b{len(STAGES) + handed_off}\s+Task runs", text), text[:1500]
    shoot(page, "ui-flow-run")
    page.get_by_role("tab", name="Task Runs").click()
    page.get_by_text(STAGES[-1], exact=False).first.wait_for(timeout=30_000)
    tab = page.inner_text("body")
    assert all(stage in tab for stage in STAGES), tab[:3000]
    query = {"artifacts": {"key": {"any_": ["test-pipeline-report"]}}, "sort": "CREATED_DESC"}
    with api_client(stack) as api:
        artifacts = wait_until(lambda: listed(api, f"{ui(stack)}/api/artifacts/filter", query), 60, "the artifacts")
    report = next(a for a in artifacts if a["flow_run_id"] == test_run)
    visit(page, f"{ui(stack)}/v2/artifacts/artifact/{report['id']}", "report.html")
    page.wait_for_function("() => [...document.images].filter(i => i.src.startsWith('data:image/png')).length >= 5")
    charts = page.eval_on_selector_all(
        "img", "els => els.filter(e => e.src.startsWith('data:image/png')).map(e => [e.complete, e.naturalWidth])"
    )
    assert len(charts) >= 5 and all(done and width > 0 for done, width in charts), charts
    shoot(page, "ui-report-artifact")
    link = page.get_by_role("link", name="report.html").get_attribute("href")
    assert link.startswith(f"http://127.0.0.1:{stack['outputs_port']}/test-pipeline/")
    user, password = stack["auth"].split(":", 1)
    outputs = browser.new_context(http_credentials={"username": user, "password": password})
    try:
        html = outputs.new_page()
        html.goto(link, wait_until="load")
        images = html.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        assert len(images) >= 5 and all(width > 0 for width in images), images
        assert "Model comparison" in html.inner_text("body")
    finally:
        outputs.close()
    stranger = browser.new_context()  # no login: the outputs service refuses (the browser would ask for one)
    try:
        assert stranger.request.get(link).status == 401
    finally:
        stranger.close()
