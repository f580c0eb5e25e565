"""``prefcurate inspect`` against ``prefcurate analyze`` on one file, and the page in a browser.

    python benchmarks/inspect_bench.py --pairs 1000000 --json inspect.json
    python benchmarks/inspect_bench.py --data pairs.parquet --rounds 3

Each round runs ``analyze --threshold 0.5 --json`` and ``inspect --threshold 0.5`` in fresh
processes, one after the other (alternating, so a change of load hits both), and records wall
time, CPU time and peak RSS from ``os.wait4``; the goal is inspect within 1.5× analyze's time.
Then the 1M page is opened in headless Chromium (as the browser tests do): the load time of the
first open (fresh profile) and of a reopen, from the browser's own navigation timing. The load
average is recorded at the start and the end: on a shared machine it explains the wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from data_bench import measure  # noqa: E402
from machine import describe  # noqa: E402


def run(kind: str, data: Path, page: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFCURATE_CATALOG": "off"}
    cli = [sys.executable, "-m", "prefcurate"]
    if kind == "analyze":
        argv = [*cli, "analyze", str(data), "--threshold", "0.5", "--json"]
    else:
        argv = [*cli, "inspect", str(data), "--threshold", "0.5", "--out", str(page)]
    wall, cpu, rss, stdout = measure(argv, env=env)
    out = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "rss_gb": round(rss, 2)}
    if kind == "analyze":
        out["sft"] = json.loads(stdout)["routing"]["sft"]
    else:
        out["page_mb"] = round(page.stat().st_size / 1e6, 2)
    return out


def browser_load(page: Path, screenshot: Path | None = None) -> dict:
    """First-open and reopen load times (ms, navigation timing) of ``page`` in headless Chromium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    for flag in (
        "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
        "--disable-background-networking --disable-component-update --disable-sync "
        "--window-size=1300,1900"
    ).split():
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="inspect-bench-")
    options.add_argument(f"--user-data-dir={profile}")
    options.binary_location = shutil.which("chromium") or shutil.which("google-chrome")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    times = []
    try:
        for _ in range(2):
            driver.get(page.resolve().as_uri())
            WebDriverWait(driver, 60).until(
                lambda d: d.execute_script("return !!(window.prefcurateInspect || {}).ready")
            )
            times.append(
                driver.execute_script(
                    "return performance.getEntriesByType('navigation')[0].loadEventEnd"
                )
            )
        if screenshot is not None:
            time.sleep(0.5)
            driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return {"first_load_ms": round(times[0]), "reload_ms": round(times[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, help="an existing file (default: synthesise one)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--screenshot", type=Path, help="save the opened page as a PNG here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="inspect-bench-"))
    data = args.data
    if data is None:
        data = work / "pairs.parquet"
        env = {**os.environ, "PYTHONPATH": str(REPO), "PREFCURATE_CATALOG": "off"}
        subprocess.run(
            [sys.executable, "-m", "prefcurate", "synth", str(data), "--n", str(args.pairs)],
            env=env,
            check=True,
            capture_output=True,
        )
    page = work / "inspect.html"
    figures: dict = {"machine_start": describe(), "data": str(data), "rounds": []}
    for _ in range(args.rounds):
        figures["rounds"].append(
            {"analyze": run("analyze", data, page), "inspect": run("inspect", data, page)}
        )
        r = figures["rounds"][-1]
        r["ratio_wall"] = round(r["inspect"]["wall_s"] / r["analyze"]["wall_s"], 2)
        r["ratio_cpu"] = round(r["inspect"]["cpu_s"] / r["analyze"]["cpu_s"], 2)
        print(json.dumps(r), flush=True)
    try:
        figures["browser"] = browser_load(page, args.screenshot)
    except Exception as exc:  # noqa: BLE001 - no browser here: the timing still stands
        figures["browser"] = {"error": f"{type(exc).__name__}: {exc}"}
    figures["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps({k: v for k, v in figures.items() if k != "rounds"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
