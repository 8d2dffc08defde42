"""``python -m pumamed bench load``: many concurrent users on one server (bounded, loopback only).

Starts ``streamlit run app.py`` on a free port of 127.0.0.1 and drives N headless Chromium
sessions (Playwright) through the image explorer and the diabetes-models pages for a bounded
time, interacting like people do (moving a slider, changing a select box, switching a radio).
It reports:

* exceptions shown (``data-testid="stException"``) and error messages (``stAlert`` errors);
* the server's resident memory (RSS, sampled every second from psutil or ``/proc/PID/status``):
  peak, at the end of the warm-up, at the end, growth after warm-up and its slope (MiB/min);
* how often the server loaded a model checkpoint (``pumamed.net.load_model``) and fitted the
  diabetes models (``pumamed.epi.modeling.run_models``): counted by a thin wrapper around the
  server process, so "models held once per process" is measured, not assumed;
* page-load and interaction latencies (time until the script is idle again).

The baseline is the same server with one session (``--sessions 1``) where a comparison is wanted.
Every browser request that is not for the local server is aborted: nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
PAGES = {"explorer": "image_explorer", "models": "diabetes_models"}
LOAD_MARK = "PUMAMED-BENCH-COUNT"

# Run inside the server process: count model loads and model fits, then hand over to streamlit.
SERVER_WRAPPER = f"""
import functools, sys
def _counting(module, name, label):
    original = getattr(module, name)
    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        print("{LOAD_MARK}", label, flush=True)
        return original(*args, **kwargs)
    setattr(module, name, wrapper)
    return wrapper
import pumamed.net, pumamed.net.checkpoint as checkpoint
counted = _counting(checkpoint, "load_model", "model_load")
pumamed.net.load_model = counted
try:
    import pumamed.epi.modeling as modeling
    _counting(modeling, "run_models", "epi_fit")
except Exception as exc:  # the epi half may be absent; the bench still measures the rest
    print("{LOAD_MARK} warning", exc, flush=True)
from streamlit.web import cli
sys.argv = ["streamlit", "run", "app.py"] + sys.argv[1:]
sys.exit(cli.main())
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sessions", type=int, default=10, help="concurrent browser sessions (default 10)")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load after start-up (default 120)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds counted as warm-up for memory growth (default: a third of --duration)")
    parser.add_argument("--pages", default="explorer,models", help="pages to visit: explorer, models (comma-separated)")
    parser.add_argument("--chromium", default=os.environ.get("PUMAMED_CHROMIUM", "/usr/bin/chromium"))
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the server")
    parser.add_argument("--page-timeout", type=float, default=180.0, help="seconds to wait for one page to settle")
    parser.add_argument("--log", help="file for the server's output (default: a temporary file)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


# --------------------------------------------------------------------------------- measurement
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` (psutil when installed, else /proc/PID/status)."""
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - the process is gone
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class MemorySampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.t0 = time.time()

    def run(self) -> None:
        start = self.t0
        while not self.stop.is_set():
            value = rss_bytes(self.pid)
            if value is not None:
                self.samples.append((time.time() - start, value))
            self.stop.wait(self.interval)


def memory_summary(samples: list[tuple[float, int]], load_start: float, warmup: float) -> dict:
    """Peak, warm-up and final RSS (MiB), growth after warm-up and its least-squares slope."""
    import numpy as np

    mib = 1024 * 1024
    if not samples:
        return {}
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples], dtype=float) / mib
    after = t >= load_start + warmup
    out = {"peak_mib": round(float(rss.max()), 1), "idle_mib": round(float(rss[t <= load_start].max()
                                                                          if (t <= load_start).any() else rss[0]), 1),
           "final_mib": round(float(rss[-1]), 1), "samples": int(len(rss))}
    if after.sum() >= 3:
        post_t, post = t[after], rss[after]
        out["after_warmup_mib"] = round(float(post[0]), 1)
        out["growth_after_warmup_mib"] = round(float(post[-1] - post[0]), 1)
        out["peak_after_warmup_mib"] = round(float(post.max()), 1)
        slope = np.polyfit(post_t - post_t[0], post, 1)[0] * 60.0 if post_t[-1] > post_t[0] else 0.0
        out["slope_after_warmup_mib_per_min"] = round(float(slope), 2)
    return out


# --------------------------------------------------------------------------------- browser side
async def _idle(page, timeout: float) -> None:
    """Until the app has rendered and its script has stopped running for 1.5 s."""
    import asyncio

    await page.wait_for_selector('[data-testid="stApp"]', timeout=timeout * 1000)
    deadline = time.time() + timeout
    idle_since = None
    while time.time() < deadline:
        state = await page.evaluate(
            "() => { const a = document.querySelector('[data-testid=\"stApp\"]');"
            " return a ? a.getAttribute('data-test-script-state') : null; }")
        # Only "notRunning" is idle: "initial" (script not started yet, e.g. a busy server) is not.
        busy = state != "notRunning" or await page.locator('[data-testid="stStatusWidget"]').count() > 0
        if not busy:
            idle_since = idle_since or time.time()
            if time.time() - idle_since >= 1.5:
                return
        else:
            idle_since = None
        await asyncio.sleep(0.25)
    raise TimeoutError("page still running")


async def _count(page, stats: dict, where: str) -> None:
    exceptions = page.locator('[data-testid="stException"]')
    n = await exceptions.count()
    if n:
        stats["exceptions"] += n
        text = (await exceptions.first.inner_text())[:300]
        stats["exception_texts"].setdefault(where, text)
    errors = page.locator('[data-testid="stAlertContentError"]')
    m = await errors.count()
    if m:
        stats["errors_shown"] += m
        stats["error_texts"].setdefault(where, (await errors.first.inner_text())[:300])


async def _timed(stats: dict, key: str, coroutine) -> None:
    t0 = time.perf_counter()
    await coroutine
    stats["latency"].setdefault(key, []).append(time.perf_counter() - t0)


async def _move_slider(page, index: int) -> bool:
    # Streamlit >= 1.5x renders the slider thumb as a visually hidden <input type="range">.
    sliders = page.locator('[data-testid="stSlider"] input[type="range"], [data-testid="stSlider"] [role="slider"]')
    n = await sliders.count()
    if not n:
        return False
    thumb = sliders.nth(index % n)
    await thumb.focus()
    await thumb.press("ArrowRight" if index % 2 == 0 else "ArrowLeft")
    return True


async def _change_select(page, index: int) -> bool:
    # Select boxes of the page body (the explorer's export / projection choices, the models page's
    # explained covariate): what users flip while looking at results. Sidebar inputs change the
    # model or the data, each a new computation; they are used only when the body has none.
    boxes = page.locator('[data-testid="stMain"] [data-testid="stSelectbox"]')
    if not await boxes.count():
        boxes = page.locator('[data-testid="stSelectbox"]')
    n = await boxes.count()
    if not n:
        return False
    await boxes.nth(index % n).click()
    options = page.locator('[role="listbox"] [role="option"]')
    try:
        await options.first.wait_for(timeout=5000)
    except Exception:  # noqa: BLE001 - a select with one option
        await page.keyboard.press("Escape")
        return False
    count = await options.count()
    await options.nth((index + 1) % max(1, count)).click()
    return True


async def _session(browser, base: str, pages: list[str], deadline: float, timeout: float, stats: dict,
                   number: int) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})

    async def local_only(route):
        if route.request.url.startswith(base):
            await route.continue_()
        else:
            stats["blocked_requests"] += 1
            await route.abort()

    await context.route("**/*", local_only)
    page = await context.new_page()
    page.set_default_timeout(timeout * 1000)  # a busy server is slow, not broken
    page.on("pageerror", lambda err: stats["js_errors"].append(str(err)[:200]))
    step = number
    first_cycle = True
    try:
        while time.time() < deadline:
            if not first_cycle:
                stats["cycles"] += 1
            for name in pages:
                if time.time() >= deadline:
                    break
                where = PAGES[name]
                try:
                    await _timed(stats, f"{name}_open", _open(page, f"{base}/{where}", timeout))
                    stats["page_visits"] += 1
                    await _count(page, stats, where)
                    for action in (_move_slider, _change_select, _move_slider):
                        if time.time() >= deadline:
                            break
                        step += 1
                        if await action(page, step):
                            await _timed(stats, f"{name}_interaction", _idle(page, timeout))
                            stats["interactions"] += 1
                            await _count(page, stats, where)
                        else:
                            stats["actions_skipped"][action.__name__] = stats["actions_skipped"].get(action.__name__, 0) + 1
                except Exception as exc:  # noqa: BLE001 - a timeout is a result, not a crash
                    stats["timeouts" if "imeout" in type(exc).__name__ + str(exc) else "driver_errors"] += 1
                    stats["driver_error_texts"].append(f"{where}: {type(exc).__name__}: {str(exc)[:160]}")
            if first_cycle:
                # Every page seen once by this session: caches are warm from here on.
                stats["first_cycle_done"].append(time.time())
                first_cycle = False
    finally:
        await context.close()


async def _open(page, url: str, timeout: float) -> None:
    await page.goto(url, wait_until="domcontentloaded", timeout=timeout * 1000)
    await _idle(page, timeout)


async def _drive(args, base: str, pages: list[str], deadline: float, stats: dict) -> None:
    import asyncio

    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            # Stagger the starts a little, as real users do; all sessions overlap for the whole run.
            async def delayed(i):
                await asyncio.sleep(0.5 * i)
                await _session(browser, base, pages, deadline, args.page_timeout, stats, i)

            await asyncio.gather(*(delayed(i) for i in range(args.sessions)))
        finally:
            await browser.close()


# --------------------------------------------------------------------------------- orchestration
def _start_server(port: int, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(log_path, "w")
    return subprocess.Popen(
        [sys.executable, "-c", SERVER_WRAPPER, "--server.headless=true", f"--server.port={port}",
         "--server.address=127.0.0.1", "--browser.gatherUsageStats=false", "--server.fileWatcherType=none",
         "--server.runOnSave=false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait_for_port(proc: subprocess.Popen, port: int, timeout: float, log_path: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            from pumamed.errors import InputError

            raise InputError(f"the streamlit server exited early; see {log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    from pumamed.errors import InputError

    raise InputError(f"the streamlit server did not listen within {timeout:.0f} s; see {log_path}")


def _counts(log_path: Path) -> dict:
    counts = {"model_load": 0, "epi_fit": 0}
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith(LOAD_MARK):
            parts = line.split()
            if len(parts) > 1 and parts[1] in counts:
                counts[parts[1]] += 1
    return counts


def run(args) -> int:
    import asyncio
    import statistics
    import tempfile

    from pumamed.errors import InputError

    if args.sessions < 1 or args.duration <= 0:
        raise InputError("--sessions must be at least 1 and --duration positive")
    pages = [p.strip() for p in args.pages.split(",") if p.strip()]
    unknown = [p for p in pages if p not in PAGES]
    if unknown or not pages:
        raise InputError(f"--pages takes {', '.join(PAGES)}; got {args.pages!r}")
    if not Path(args.chromium).exists():
        raise InputError(f"Chromium not found at {args.chromium} (install it or pass --chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError as exc:
        raise InputError("the load test needs playwright (pip install -r requirements-test.txt)") from exc

    warmup = args.duration / 3 if args.warmup is None else args.warmup
    log_path = Path(args.log) if args.log else Path(tempfile.mkstemp(prefix="pumamed-load-", suffix=".log")[1])
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = _start_server(port, log_path)
    sampler = MemorySampler(server.pid)
    stats = {"exceptions": 0, "errors_shown": 0, "page_visits": 0, "interactions": 0, "timeouts": 0,
             "driver_errors": 0, "blocked_requests": 0, "js_errors": [], "exception_texts": {}, "error_texts": {},
             "driver_error_texts": [], "latency": {}, "cycles": 0, "first_cycle_done": [],
             "actions_skipped": {}}
    try:
        _wait_for_port(server, port, args.startup_timeout, log_path)
        sampler.start()
        time.sleep(2.0)  # a few idle samples
        load_start = sampler.samples[-1][0] if sampler.samples else 0.0
        t0 = time.time()
        deadline = t0 + args.duration
        asyncio.run(asyncio.wait_for(_drive(args, base, pages, deadline, stats),
                                     timeout=args.duration + args.page_timeout + 60))
        wall = time.time() - t0
    finally:
        sampler.stop.set()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    counts = _counts(log_path)
    # Warm-up ends after --warmup seconds of load or when every session has seen every page once
    # (the first visits build the caches: model, dataset, panel, fitted models), whichever is later.
    if len(stats["first_cycle_done"]) == args.sessions:
        warmup = max(warmup, max(stats["first_cycle_done"]) - sampler.t0 - load_start)
    else:
        warmup = max(warmup, args.duration)  # some session never finished a cycle: no steady state
    latency = {key: {"median_s": round(statistics.median(values), 2), "max_s": round(max(values), 2), "n": len(values)}
               for key, values in sorted(stats.pop("latency").items())}
    result = {
        "sessions": args.sessions, "duration_s": args.duration, "wall_s": round(wall, 1), "pages": pages,
        "warmup_s": round(warmup, 1), **{k: stats[k] for k in ("page_visits", "cycles", "interactions", "exceptions", "errors_shown",
                                                      "timeouts", "driver_errors", "blocked_requests")},
        "model_loads": counts["model_load"], "epi_model_fits": counts["epi_fit"],
        "memory": memory_summary(sampler.samples, load_start, warmup), "latency": latency,
        "exception_texts": stats["exception_texts"], "error_texts": stats["error_texts"],
        "js_errors": stats["js_errors"][:5], "driver_error_texts": stats["driver_error_texts"][:5],
        "actions_skipped": stats["actions_skipped"],
        # RSS every ~5 s (seconds since the server listened, MiB), to judge the shape of the curve
        "rss_series": [(round(t, 1), round(v / 2**20, 1)) for t, v in sampler.samples[::5]],
        "load_start_s": round(load_start, 1),
        "server_log": str(log_path), "cpu_count": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        mem = result["memory"]
        print(f"{args.sessions} sessions x {args.duration:.0f} s on {base} ({', '.join(pages)}), wall {wall:.0f} s")
        print(f"  page visits {result['page_visits']}, interactions {result['interactions']}, "
              f"timeouts {result['timeouts']}, driver errors {result['driver_errors']}")
        print(f"  exceptions shown {result['exceptions']}, error messages shown {result['errors_shown']}, "
              f"requests off loopback blocked {result['blocked_requests']}")
        print(f"  model loads {result['model_loads']}, diabetes-model fits {result['epi_model_fits']} "
              "(cached: once per checkpoint / per distinct settings)")
        print(f"  server RSS: idle {mem.get('idle_mib')} MiB, peak {mem.get('peak_mib')} MiB, after warm-up "
              f"{mem.get('after_warmup_mib')} MiB, final {mem.get('final_mib')} MiB, growth after warm-up "
              f"{mem.get('growth_after_warmup_mib')} MiB ({mem.get('slope_after_warmup_mib_per_min')} MiB/min)")
        for key, value in latency.items():
            print(f"  {key:22} median {value['median_s']:.2f} s, max {value['max_s']:.2f} s (n={value['n']})")
        for where, text in result["exception_texts"].items():
            print(f"  exception on {where}: {text}")
    return 1 if result["exceptions"] else 0
