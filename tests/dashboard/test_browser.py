"""The dashboard in a real browser: headless Chromium driven by Selenium, against the function app on
the local host (waitress, timers, queue receivers) with a real Ray head and the real trainer.

Chromium and its driver are Debian's ``chromium`` and ``chromium-driver``, installed by
``make browser`` (a prerequisite of ``make test``). Set ``RLQ_DASHBOARD_SCREENSHOT`` to a path to
keep a screenshot of the finished run's page (``make screenshot`` writes the README's).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from shared.adapters.compute.compute_twin import ComputeTwin
from shared.adapters.compute.ray_jobs import RayJobsBackend
from shared.composition import Wiring, build
from shared.contracts.run import RunState
from shared.errors import TransientError
from shared.localhost import LocalHost
from shared.settings import Settings
from tests.e2e.conftest import e2e_env
from tests.support.models import complete

pytestmark = pytest.mark.ray

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CARTPOLE = {"env": "CartPole-v1", "algorithm": "IMPALA"}


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: run `make browser` (Debian chromium, chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-dev-shm-usage",
        "--window-size=1200,1400",
        "--force-device-scale-factor=1",
        "--no-first-run",
        "--hide-scrollbars",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class Outage:
    """The twin's compute refuses (transiently) while ``on``: the way a request gets dead-lettered."""

    def __init__(self, twin: ComputeTwin) -> None:
        self.on = False
        self.twin = twin
        real = twin.ensure_compute

        def ensure_compute(request):
            if self.on:
                raise TransientError("compute unreachable (outage)")
            return real(request)

        twin.ensure_compute = ensure_compute  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def served(ray_head, tmp_path_factory) -> Iterator[tuple[Wiring, LocalHost, Outage]]:
    """``rlq serve`` in-process: the function app on the local host, the Ray head as the default
    backend and the compute twin as a second one (``compute.backend: twin``)."""
    data_dir = tmp_path_factory.mktemp("dash") / "rlq"
    values = {
        k.removeprefix("RLQ_").lower(): v
        for k, v in e2e_env(
            ray_head,
            data_dir,
            RLQ_MAX_IN_FLIGHT=4,
            RLQ_INTAKE_RETRY_ATTEMPTS=1,  # one re-send after a transient failure, then the dead letters
            RLQ_INTAKE_RETRY_BASE_S=0.5,
        ).items()
    }
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    twin = ComputeTwin(settings.data_dir / "twin.sqlite3", polls_to_finish=4)
    compute = {"ray": RayJobsBackend(address=settings.ray_address, settings=settings), "twin": twin}
    w = build(settings, compute=compute)
    outage = Outage(twin)
    with pytest.MonkeyPatch.context() as mp:  # the host reads %RLQ_POLL_SCHEDULE% from the environment first
        mp.setenv("RLQ_POLL_SCHEDULE", settings.poll_schedule)
        host = LocalHost.for_wiring(w, http_port=0)
    host.start()
    try:
        yield w, host, outage
    finally:
        host.stop()


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def wait(driver: WebDriver, what: str, until: Callable[[WebDriver], Any], timeout_s: float) -> Any:
    try:
        # a live region may be swapped between finding an element and reading it: look again
        return WebDriverWait(
            driver, timeout_s, poll_frequency=0.5, ignored_exceptions=[StaleElementReferenceException]
        ).until(until)
    except TimeoutException:
        raise AssertionError(f"{what}: not seen within {timeout_s:.0f} s") from None


def state_of(driver: WebDriver) -> str:
    return driver.find_element(By.CSS_SELECTOR, '[data-field="state"] .badge').text


def chart_points(driver: WebDriver) -> int:
    return int(driver.find_element(By.CSS_SELECTOR, "svg.chart").get_attribute("data-points"))


def no_alert(driver: WebDriver) -> bool:
    try:
        driver.switch_to.alert  # noqa: B018 - the property raises when no dialog is open
    except NoAlertPresentException:
        return True
    return False


def tab_to(driver: WebDriver, element_id: str, max_tabs: int = 40) -> None:
    """Press Tab from the top of the page until ``element_id`` has the focus (keyboard reachability)."""
    driver.execute_script("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
    for _ in range(max_tabs):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        if driver.switch_to.active_element.get_attribute("id") == element_id:
            return
    raise AssertionError(f"#{element_id} not reached with {max_tabs} presses of Tab")


def test_a_run_appears_its_curve_grows_and_it_reaches_notified(browser, served):
    w, host, _ = served
    browser.get(f"{host.base_url}/api/ui")
    assert "Training runs" in browser.find_element(By.TAG_NAME, "h1").text
    assert browser.find_elements(By.CSS_SELECTOR, 'tr[data-run="dash-curve"]') == []
    shot = os.environ.get("RLQ_DASHBOARD_SCREENSHOT")
    # six iterations show growth; the README's picture trains on to the demo's target
    stop = {"episode_reward_mean": 150, "time_total_s": 300} if shot else {"training_iteration": 6}
    body = {**CARTPOLE, "request_id": "dash-curve", "stop": stop, "tags": {"team": "rl"}}
    post_json(f"{host.base_url}/api/trainings", body)
    # the list is live: the new run shows up without a reload
    row = wait(
        browser,
        "the new run in the list",
        lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-run="dash-curve"]'),
        30,
    )[0]
    row.find_element(By.LINK_TEXT, "dash-curve").send_keys(Keys.ENTER)  # followed from the keyboard
    wait(browser, "the run page", lambda d: d.find_elements(By.CSS_SELECTOR, "svg.chart"), 15)
    assert browser.find_element(By.CSS_SELECTOR, "h1").text == "dash-curve"
    first = wait(
        browser, "a first training iteration", lambda d: chart_points(d) >= 1 and chart_points(d), 300
    )
    grown = wait(browser, "the curve growing", lambda d: chart_points(d) > first and chart_points(d), 240)
    assert grown > first
    assert browser.find_element(By.CSS_SELECTOR, "svg.chart polyline.mean").get_attribute("points")
    wait(browser, "state notified", lambda d: state_of(d) == "notified", 480)
    wait(
        browser,
        "live updates ending",
        lambda d: "Final" in d.find_element(By.CSS_SELECTOR, "[data-live-status]").text,
        30,
    )
    # deliveries are recorded after the state: the page has settled once notified_at is set
    assert w.store.get("dash-curve").notified_at is not None
    status = w.store.get("dash-curve").completion.status if shot else "Completed"
    assert browser.find_element(By.CSS_SELECTOR, f".status-{status}").text == status
    checkpoint = browser.find_element(By.ID, "checkpoint").text
    assert checkpoint.startswith("file://") and "dash-curve" in checkpoint
    assert chart_points(browser) >= 6
    portal = browser.find_element(By.ID, "portal").get_attribute("href")
    assert portal.startswith(f"http://127.0.0.1:{w.settings.ray_dashboard_port}")
    assert no_alert(browser)
    if shot:
        browser.set_window_size(1200, 1300)  # the summary, the curve and the outcome
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(Path(shot).with_suffix(".tmp.png")))
        shutil.move(str(Path(shot).with_suffix(".tmp.png")), shot)
        browser.set_window_size(1200, 1400)


def test_cancel_on_a_running_run_ends_it_canceled(browser, served):
    w, host, _ = served
    body = {**CARTPOLE, "request_id": "dash-cancel", "stop": {"time_total_s": 600}}
    post_json(f"{host.base_url}/api/trainings", body)
    browser.get(f"{host.base_url}/api/ui/runs/dash-cancel")
    wait(browser, "the run training", lambda d: state_of(d) == "running" and chart_points(d) >= 1, 300)
    tab_to(browser, "cancel")
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    alert = wait(browser, "the confirmation", lambda d: d.switch_to.alert, 10)
    assert "dash-cancel" in alert.text
    alert.accept()
    wait(browser, "cancel recorded", lambda d: w.store.get("dash-cancel").cancel_requested, 15)
    wait(browser, "state notified", lambda d: state_of(d) == "notified", 180)
    wait(browser, "the outcome", lambda d: d.find_elements(By.CSS_SELECTOR, ".status-Canceled"), 30)
    rec = w.store.get("dash-cancel")
    assert rec.completion.status == "Canceled" and rec.stop_reason == "canceled"
    assert browser.find_elements(By.ID, "cancel") == []


def test_a_dead_letter_is_resubmitted_from_the_page_and_runs(browser, served):
    w, host, outage = served
    q = w.settings.queue_name
    evil = "<script>alert(1)</script>"
    w.broker.send(q, json.dumps({**CARTPOLE, "request_id": "dash-xss", "tags": {evil: evil}}), message_id="x")
    outage.on = True
    body = {
        **CARTPOLE,
        "request_id": "dash-dlq",
        "stop": {"training_iteration": 3},
        "compute": {"backend": "twin"},
    }
    w.broker.send(q, json.dumps(body), message_id="dash-dlq")
    deadline = time.monotonic() + 60
    while len(w.broker.dead_letters(q)) < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
    outage.on = False  # the fault is over; the dead letter can run now
    letters = {json.loads(d.body)["request_id"]: d for d in w.broker.dead_letters(q)}
    dead = letters["dash-dlq"]
    assert dead.reason == "TransientFailure" and "compute unreachable (outage)" in dead.description
    assert w.store.get("dash-dlq").state is RunState.rejected
    seq = dead.sequence_number

    browser.get(f"{host.base_url}/api/ui/dead-letters")
    article = browser.find_element(By.ID, f"letter-intake-{seq}")
    assert "TransientFailure" in article.text and "compute unreachable (outage)" in article.text
    xss = browser.find_element(By.ID, f"letter-intake-{letters['dash-xss'].sequence_number}")
    xss.find_element(By.TAG_NAME, "summary").click()
    assert evil in xss.find_element(By.TAG_NAME, "pre").text  # shown as text, never run
    assert no_alert(browser)
    button = article.find_element(By.CSS_SELECTOR, "button.resubmit")
    button.send_keys(Keys.SPACE)
    wait(browser, "the confirmation", lambda d: d.switch_to.alert, 10).accept()
    notice = wait(browser, "the notice", lambda d: d.find_elements(By.CSS_SELECTOR, ".notice"), 15)[0]
    assert f"{dead.message_id}:resubmit:1" in notice.text
    assert browser.find_elements(By.ID, f"letter-intake-{seq}") == []
    browser.get(f"{host.base_url}/api/ui/runs/dash-dlq")
    wait(browser, "the resubmitted run notified", lambda d: state_of(d) == "notified", 60)
    assert w.store.get("dash-dlq").completion.status == "Completed"
    assert browser.find_element(By.CSS_SELECTOR, ".status-Completed").text == "Completed"


def test_pages_fit_a_phone_and_follow_dark_mode(browser, served):
    _, host, _ = served
    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
    )
    browser.set_window_size(390, 844)
    w, _, _ = served
    complete(w.service, "dash-model-1", mean=100.0, model="dash-model")
    complete(w.service, "dash-model-2", mean=120.0, model="dash-model")
    try:
        for path in (
            "/api/ui",
            "/api/ui/runs/dash-curve",
            "/api/ui/dead-letters",
            "/api/ui/models/dash-model",
        ):
            browser.get(f"{host.base_url}{path}")
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{path} scrolls sideways by {overflow} px on a phone"
            bg = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
            rgb = [int(c) for c in bg[bg.index("(") + 1 : bg.index(")")].split(",")[:3]]
            assert sum(rgb) < 120, f"{path}: background {bg} in dark mode"
        browser.get(f"{host.base_url}/api/ui")
        label = browser.execute_script(
            "return getComputedStyle(document.querySelector('td[data-label=\"State\"]'), '::before').content"
        )
        assert label == '"State"'  # table rows become labelled cards
        browser.get(f"{host.base_url}/api/ui/models/dash-model")
        label = browser.execute_script(
            "return getComputedStyle(document.querySelector('td[data-label=\"Evaluation\"]'), '::before').content"
        )
        assert label == '"Evaluation"'  # the versions too
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
        browser.set_window_size(1200, 1400)


@pytest.fixture
def other_origin(tmp_path) -> Iterator[tuple[Path, str]]:
    """A directory served from another origin: ``localhost`` is not the dashboard's ``127.0.0.1``."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield tmp_path, f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_cross_site_form_cannot_cancel(browser, served, other_origin):
    """A page on another origin posting the Cancel form: refused, the run goes on."""
    w, host, _ = served
    post_json(
        f"{host.base_url}/api/trainings",
        {
            **CARTPOLE,
            "request_id": "dash-csrf",
            "stop": {"training_iteration": 1},
            "compute": {"backend": "twin"},
        },
    )
    browser.get(f"{host.base_url}/api/ui/runs/dash-csrf")  # the browser holds the dashboard's cookie
    directory, origin = other_origin
    (directory / "attacker.html").write_text(
        f'<form id="f" method="post" action="{host.base_url}/api/ui/runs/dash-csrf/cancel">'
        '<input name="csrf_token" value="guess"></form>'
        '<script>document.getElementById("f").submit()</script>'
    )
    browser.get(f"{origin}/attacker.html")
    wait(browser, "the refusal", lambda d: "Refused" in d.find_element(By.TAG_NAME, "h1").text, 15)
    assert "another site" in browser.find_element(By.CSS_SELECTOR, ".error").text
    assert w.store.get("dash-csrf").cancel_requested is False
