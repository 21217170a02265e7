"""End to end: a real run on the embedded servers, the dashboard beside it, a real browser.

Headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by selenium) opens
the page while the run goes on: the federation tree appears and the perplexity chart gains
points as metrics arrive, pushed by server-sent events, without reloading the page. Then a
second dashboard, given no config, replays the finished run from offset 0 and rebuilds the
same tree and curves from the streams alone. Set ``WORLDLM_DASHBOARD_SCREENSHOT=PATH`` to
also keep the screenshot there (docs/dashboard.png is made that way).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from brokers.embedded import Servers
from tests.waiting import until as wait_until
from tests.worldlm.participants.helpers import endpoints, hierarchy
from worldlm.config.hierarchy import Hierarchy
from worldlm.dashboard import Dashboard
from worldlm.participants.runner import run_hierarchy

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def tiny_tree(run_id: str) -> Hierarchy:
    """root -> latin (2 clients), slavic (2 clients, DP on its edge): ~20-40 s on two cores."""
    return hierarchy(
        run_id,
        federations={
            "root": {},
            "latin": {"parent": "root"},
            # force: two members cannot carry DP noise (the load check refuses it); the test
            # shows the DP metrics, not a model worth training.
            "slavic": {
                "parent": "root",
                "dp": {"clip_norm": 1.0, "noise_multiplier": 0.1, "force": True},
            },
        },
        clients={
            "fr-0": ("latin", "lang-fr"),
            "es-0": ("latin", "lang-es"),
            "ru-0": ("slavic", "lang-ru"),
            "pl-0": ("slavic", "lang-pl"),
        },
        rounds=5,
        defaults={"local_steps": 4, "internal_rounds": 2, "schedule": {"deadline_s": 30.0}},
    )


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(
            "no Chromium here: `apt-get install chromium chromium-driver` (make test does it "
            "as root) to run the browser test"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="worldlm-chromium-")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1440,1240",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


async def js(driver: Any, script: str) -> Any:
    """Run ``script`` in the page, off the event loop (which serves the dashboard)."""
    return await asyncio.to_thread(driver.execute_script, script)


async def until(driver: Any, script: str, what: str, timeout_s: float = 60.0) -> Any:
    """Poll ``script`` in the page until it is truthy; fail with ``what`` after the timeout."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                if value := await js(driver, script):
                    return value
                await asyncio.sleep(0.25)
    except TimeoutError:
        pytest.fail(f"the page never showed {what}")


async def screenshot(driver: Any, path: Path) -> None:
    await js(driver, "window.scrollTo(0, 0)")
    assert await asyncio.to_thread(driver.save_screenshot, str(path))
    assert await asyncio.to_thread(os.path.getsize, path) > 10_000


#: How many perplexity points the per-client chart holds (the page keeps it in a data attribute).
POINTS = "Number(document.getElementById('chart-client-ppl').dataset.points)"


async def test_browser_follows_a_live_run_and_a_replay_rebuilds_it(
    servers: Servers, run_id: str, browser: Any, tmp_path: Path
) -> None:
    h = tiny_tree(run_id)
    async with asyncio.timeout(150):
        async with Dashboard(
            kafka=servers.kafka,
            redis=servers.redis,
            run_id=run_id,
            hierarchy=h,
            port=0,
            poll_s=0.5,
        ) as board:
            await asyncio.to_thread(browser.get, board.url)
            # The tree comes from the config at once, before the run starts.
            feds = await until(
                browser,
                "return [...document.querySelectorAll('#tree [data-federation]')]"
                ".map(e => e.dataset.federation)",
                "the federation tree",
            )
            assert set(feds) == {"root", "latin", "slavic"}
            run = asyncio.create_task(run_hierarchy(h, endpoints(servers)))
            # Membership comes from the events and Redis.
            await until(
                browser,
                "return document.querySelectorAll('#tree .pill.live').length >= 4",
                "clients shown as joined",
            )

            # The chart gains points while the run is still going: pushed, not reloaded.
            first = await until(browser, f"return {POINTS}", "a first perplexity point")
            await until(browser, f"return {POINTS} > {first}", "more points")
            assert not run.done(), "the run ended before the chart grew: make it longer"
            # Each federation's leading aggregator replica (here: this process) is shown.
            lead = f"{socket.gethostname()}:{os.getpid()}"
            await until(
                browser,
                "return document.querySelector('#rounds tr[data-federation=\"latin\"]')"
                f"?.textContent.includes({lead!r})",
                "the leading replica",
            )
            marker = await js(browser, "return window.__sameDocument = 'kept'")
            await screenshot(browser, tmp_path / "dashboard-live.png")
            if target := os.environ.get("WORLDLM_DASHBOARD_SCREENSHOT"):
                # For the docs: a run halfway through (open rounds, joined members).
                await until(browser, f"return {POINTS} >= 20", "half the run", timeout_s=30)
                await screenshot(browser, Path(target))

            result = await run
            final_points = sum(1 for r in result.client_reports() if "val_ppl" in r.values)
            await until(browser, f"return {POINTS} >= {final_points}", "all")
            assert await js(browser, "return window.__sameDocument") == marker == "kept"
            assert await js(browser, "return document.getElementById('conn').textContent") == (
                "live"
            )
            eps = await js(
                browser,
                "return document.querySelector('#dp .brow .label')?.textContent || ''",
            )
            assert eps == "slavic"
            await screenshot(browser, tmp_path / "dashboard-final.png")

            async with aiohttp.ClientSession() as http:
                async with http.get(board.url + "api/state") as response:
                    live_view = await response.json()
                async with http.get(board.url + "metrics") as response:
                    metrics = await response.text()
            for client in h.clients:
                assert f'worldlm_client_val_ppl{{client="{client}"' in metrics
            assert 'worldlm_federation_dp_epsilon{federation="slavic"' in metrics

        # A finished run, replayed from offset 0 without a config: the same tree and curves.
        async with Dashboard(
            kafka=servers.kafka, redis=servers.redis, run_id=run_id, port=0
        ) as replay:
            expected = live_view["counters"]["metrics"]
            await wait_until(
                lambda: replay.state.counters["metrics"] >= expected, what="the replay's metrics"
            )
            view = replay.state.snapshot()
    assert {f: v["parent"] for f, v in view["federations"].items()} == {
        "root": None,
        "latin": "root",
        "slavic": "root",
    }
    assert {c: v["federation"] for c, v in view["clients"].items()} == {
        c: client.federation for c, client in h.clients.items()
    }
    for client in h.clients:
        assert view["clients"][client]["ppl"] == live_view["clients"][client]["ppl"]
    for fed in ("latin", "slavic"):
        assert view["federations"][fed]["ppl"] == live_view["federations"][fed]["ppl"]
