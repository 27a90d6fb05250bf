"""The built book in a real browser: every page of ``_build/html`` in headless Chromium, with no network.

Serves ``_build/html`` on 127.0.0.1 (a free port, ``http.server`` in a thread) and opens every page with Playwright
driving Debian's Chromium (``/usr/bin/chromium``; Playwright never downloads a browser here). On every page:

* no JavaScript error (uncaught exception or console error), no failed or HTTP-error resource load, and no request
  to any host but 127.0.0.1 (every request is routed through a handler that aborts the others);
* every plotly figure has drawn (SVG with plotted content, or a WebGL canvas), and moving its slider (a click on
  the slider's rail, as a reader would) changes what is drawn;
* every ``to_jshtml`` animation has its image, slider and buttons, and its "last frame" button changes the image;
* no launch button (Colab, Binder, ...) while the repository URL in ``_config.yml`` is the placeholder;
* no live widget is left on the page (without a kernel it would be a dead control): no widget views, no
  ``<input type="range">`` outside animation players;
* every math element is typeset by MathJax (an ``mjx-container`` inside), and no raw ``$$``, TeX delimiters or
  figure JSON shows as text;
* the page reads on a desktop and on a phone (with every folded cell unfolded): at 1280 px no element in the article
  column scrolls sideways or sticks out of it (code, outputs, tables, display math); at 390 px the page itself does
  not scroll sideways; no static figure is shrunk by more than 1.3x (its text would fall below ~10 px), and each is
  a numbered figure with a caption and alt text; no raw label (``eq-...``) or unresolved reference (``??``) shows;
* a full-page screenshot of each page goes to ``_build/screenshots/<page>.png`` for people to look at, and
  one of each interactive figure to ``<page>.figure<i>.png``.

Without Chromium, Playwright or a built book the test is skipped with instructions, except when the environment
variable ``CI`` is set (``.ci/run``): then it fails.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = os.environ.get("FMBOOK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 # WebGL (plotly's 3-D figures) on the CPU, since there is no GPU
                 "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
SKIP_PAGES = {"search.html", "genindex.html", "py-modindex.html"}
TIMEOUT_MS = 60_000  # per browser operation: generous, the machine may be busy
# the repository URL of _config.yml until the book is published: no page may offer a launch button to it
PLACEHOLDER_URL = "https://github.com/fmbook/fmbook"


def _repo_url() -> str:
    import yaml

    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


REPO_IS_PLACEHOLDER = _repo_url() == PLACEHOLDER_URL


def _unavailable(reason: str):
    """Skip on a developer machine; fail in CI, where the browser test must run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (the environment variable CI is set, so the browser test may not be skipped)")
    pytest.skip(reason)


def _pages() -> list[str]:
    """Every page of the built book, relative to _build/html (redirect stubs, search and index pages left out)."""
    if not SITE.is_dir():
        return []
    pages = []
    for path in sorted(SITE.rglob("*.html")):
        rel = path.relative_to(SITE).as_posix()
        if rel.split("/")[0].startswith("_") or rel in SKIP_PAGES:
            continue
        if path.stat().st_size < 2000 and 'http-equiv="Refresh"' in path.read_text(errors="replace"):
            continue  # index.html: a redirect to the first page
        pages.append(rel)
    return pages


PAGES = _pages()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
        pass


@pytest.fixture(scope="module")
def server():
    if not (SITE / "index.html").is_file():
        _unavailable(f"no built book at {SITE}: build it first with `jupyter-book build .` in {ROOT}")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(_QuietHandler, directory=str(SITE)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _unavailable(f"Chromium not found at {CHROMIUM}: install Debian's `apt-get install -y chromium` "
                     "(or set FMBOOK_CHROMIUM to a Chromium binary)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the Python package playwright is missing: `pip install -r requirements.txt` "
                     "(its browser download is not needed: the test uses Debian's Chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def screenshots():
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    return SHOTS


def test_book_is_built():
    """Every chapter of _toc.yml has a page in the built book (and the test below has pages to visit)."""
    if not PAGES:
        _unavailable(f"no built book at {SITE}: build it first with `jupyter-book build .` in {ROOT}")
    import yaml

    def files(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("file", "root"):
                    yield value
                else:
                    yield from files(value)
        elif isinstance(node, list):
            for item in node:
                yield from files(item)

    wanted = {re.sub(r"\.(md|ipynb)$", "", f) + ".html" for f in files(yaml.safe_load((ROOT / "_toc.yml").read_text()))}
    missing = sorted(wanted - set(PAGES))
    assert not missing, f"pages in _toc.yml but not in {SITE}: {missing}"


# --- what the page itself reports, evaluated in the browser -----------------------------------------------------

_MATH_STATE = """() => {
  const maths = [...document.querySelectorAll('.math, div.math, span.math')]
      .filter(e => !e.parentElement.closest('.math'));
  const raw = maths.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.trim().slice(0, 80));
  return {n: maths.length, untypeset: raw};
}"""

_PLOTLY_STATE = """() => [...document.querySelectorAll('.plotly-graph-div')].map(gd => {
  const svg = gd.querySelector('svg.main-svg');
  const canvases = [...gd.querySelectorAll('canvas')].filter(c => c.width > 0 && c.height > 0);
  const marks = gd.querySelectorAll('.heatmaplayer image, .contourlayer path, .scatterlayer path.point,'
      + ' .scatterlayer path.js-line, .barlayer path, .imagelayer image, .pielayer path').length;
  return {id: gd.id, ready: !!gd._fullLayout, svg: !!svg, marks: marks, canvases: canvases.length,
          gl3d: !!(gd._fullLayout && gd._fullLayout._has && gd._fullLayout._has('gl3d')),
          sliders: (gd.layout && gd.layout.sliders || []).length,
          frames: (gd._transitionData && gd._transitionData._frames || []).length,
          nodata: !!gd.querySelector('.gl-container .no-webgl, .no-webgl')};
})"""

# what is drawn, as a string: the SVG of the plot area plus the pixels of any WebGL canvas
_PLOTLY_PICTURE = """(id) => {
  const gd = document.getElementById(id);
  const parts = [...gd.querySelectorAll('.cartesianlayer, .heatmaplayer, .imagelayer, .polarlayer, .ternarylayer')]
      .map(e => e.innerHTML);
  for (const c of gd.querySelectorAll('canvas')) { try { parts.push(c.toDataURL()); } catch (e) {} }
  return parts.join('|');
}"""

_SLIDER_ACTIVE = "(id) => { const s = document.getElementById(id).layout.sliders; return s && s[0].active; }"

_ANIMATIONS = """() => [...document.querySelectorAll('div.animation')].map((a, i) => ({
  i: i, img: !!a.querySelector('img'), src: (a.querySelector('img') || {}).src || '',
  slider: !!a.querySelector('input.anim-slider'), buttons: a.querySelectorAll('.anim-buttons button').length}))"""

_DEAD_WIDGETS = """() => {
  const views = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"], .jupyter-widgets,'
      + ' .widget-area, .jp-OutputArea-output .widget-slider').length;
  const ranges = [...document.querySelectorAll('input[type=range]')].filter(e => !e.closest('div.animation')).length;
  return {views: views, ranges: ranges};
}"""

# launch buttons (Colab, Binder, JupyterHub, live code) that the theme draws from _config.yml's launch_buttons
_LAUNCH_LINKS = """() => [...document.querySelectorAll('a[href*="colab.research.google.com"], a[href*="mybinder"],'
    + ' a[href*="hub/user-redirect"], .dropdown-launch-buttons, button.thebe-launch-button')]
    .map(e => e.getAttribute('href') || e.className)"""

_RAW_TEXT = [
    (re.compile(r"\beq-[a-z0-9]+(-[a-z0-9]+)*\b"), "a raw equation label"),
    (re.compile(r"\?\?"), "an unresolved reference (??)"),
    (re.compile(r"\$\$"), "raw $$ (untypeset display math)"),
    (re.compile(r"\\begin\{(equation|align)"), "raw \\begin{...} (untypeset math)"),
    (re.compile(r'"(bdata|layout|frames)"\s*:|application/vnd\.plotly'), "raw figure JSON"),
    (re.compile(r"This interactive figure is drawn by plotly\.js"), "show_plotly's note that plotly.js is missing"),
    (re.compile(r"skipping unknown output mime type|Unsupported output type"), "a MyST-NB rendering failure"),
]

# folded cells unfolded, so that hidden code is measured too
_UNFOLD = """() => { document.querySelectorAll('details:not([open])').forEach(d => { d.open = true; d.dataset.fmUnfolded = 1; }); }"""
_REFOLD = """() => { document.querySelectorAll('details[data-fm-unfolded]').forEach(d => { d.open = false; delete d.dataset.fmUnfolded; }); }"""

# elements of the article column that scroll sideways or stick out of it (not counting what lies inside a scroller)
_WIDE = """() => {
  const art = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const col = art.getBoundingClientRect();
  const out = [];
  const describe = (el, why) => {
    const cls = (el.className && el.className.baseVal === undefined ? el.className : '').toString().slice(0, 40);
    const text = (el.innerText || el.textContent || '').trim().replace(/\\s+/g, ' ').slice(0, 60);
    return `${el.tagName.toLowerCase()}.${cls} ${why}: ${text}`;
  };
  for (const el of art.querySelectorAll('*')) {
    if (el.closest('.plotly-graph-div, div.animation, mjx-assistive-mml')) continue;
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    const cs = getComputedStyle(el);
    if (['auto', 'scroll'].includes(cs.overflowX) && el.scrollWidth > el.clientWidth + 1) {
      out.push(describe(el, `scrolls (${el.scrollWidth} px in ${el.clientWidth} px)`));
      continue;
    }
    let p = el.parentElement, inside = false;
    while (p && p !== art) {
      const o = getComputedStyle(p).overflowX;
      if (o !== 'visible') { inside = true; break; }
      p = p.parentElement;
    }
    if (!inside && (r.right > col.right + 1 || r.left < col.left - 1)) {
      out.push(describe(el, `sticks out (${Math.round(r.left - col.left)} to ${Math.round(r.right - col.left)} px `
                            + `of a ${Math.round(col.width)} px column)`));
    }
  }
  return out;
}"""

# static figures: shrink factor, caption and alt text
_FIGURES = """() => {
  // every image in the column but the animations' frames and plotly's
  const art = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  return [...art.querySelectorAll('img')].filter(img => !img.closest('div.animation, .plotly-graph-div'))
    .map(img => {
      const fig = img.closest('figure');
      const cap = fig && fig.querySelector('figcaption');
      // the width it is meant to be shown at: its width attribute (a sharper image stores more pixels), else its own
      const natural = parseFloat(img.getAttribute('width')) || img.naturalWidth;
      return {src: (img.getAttribute('src') || '').slice(0, 60), natural: natural, shown: img.clientWidth,
              alt: img.getAttribute('alt') || '', caption: cap ? cap.innerText.trim().slice(0, 60) : '',
              number: !!(cap && cap.querySelector('.caption-number'))};
    });
}"""

_PAGE_WIDTH = "() => ({scroll: document.documentElement.scrollWidth, view: window.innerWidth})"


def _check_layout(page, problems):
    """Desktop width: nothing in the column scrolls or sticks out; figures legible, numbered, captioned."""
    page.evaluate(_UNFOLD)
    page.wait_for_timeout(200)
    for item in page.evaluate(_WIDE):
        problems.append(f"at 1280 px, {item}")
    page.evaluate(_REFOLD)
    for fig in page.evaluate(_FIGURES):
        fig["src"] = repr(fig["alt"][:50]) if fig["alt"] else fig["src"]
        if fig["shown"] and fig["natural"] / fig["shown"] > 1.3:
            problems.append(f"figure {fig['src']} shrunk {fig['natural'] / fig['shown']:.2f}x "
                            f"({fig['natural']} px shown at {fig['shown']} px): its text is too small")
        if not (fig["caption"] and fig["number"]):
            problems.append(f"figure {fig['src']} has no numbered caption")
        if not fig["alt"] or fig["alt"].startswith(("_build", "../", "data:")) or fig["alt"].endswith(".png"):
            problems.append(f"figure {fig['src']} has no alt text (alt={fig['alt']!r})")


def _check_phone(page, problems, shot):
    """Phone width: the page itself never scrolls sideways; a full-page screenshot to ``shot``."""
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    width = page.evaluate(_PAGE_WIDTH)
    if width["scroll"] > width["view"] + 1:
        problems.append(f"at 390 px the page scrolls sideways ({width['scroll']} px wide)")
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(shot), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


@pytest.mark.parametrize("page_path", PAGES or ["(no built book)"])
def test_page(page_path, server, browser, screenshots):
    if page_path == "(no built book)":
        _unavailable(f"no built book at {SITE}: build it first with `jupyter-book build .` in {ROOT}")
    problems: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    host = urlsplit(server).netloc

    def route(r):
        parts = urlsplit(r.request.url)
        if parts.scheme in ("data", "blob", "about") or parts.netloc == host:
            r.continue_()
        else:
            problems.append(f"request to another host: {r.request.url}")
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("pageerror", lambda e: problems.append(f"JavaScript error: {e}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text} ({m.location.get('url')})")
            # the browser's own favicon.ico request is not made by the page
            if m.type == "error" and not m.location.get("url", "").endswith("/favicon.ico") else None)
    page.on("requestfailed", lambda r: problems.append(f"failed load: {r.url} ({r.failure})")
            if urlsplit(r.url).netloc == host else None)
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    try:
        page.goto(f"{server}/{page_path}", wait_until="load")
        # MathJax 3 typesets after its startup promise resolves
        page.evaluate("async () => { if (window.MathJax && MathJax.startup && MathJax.startup.promise)"
                      " await MathJax.startup.promise; }")
        math = page.evaluate(_MATH_STATE)
        if math["untypeset"]:
            problems.append(f"{len(math['untypeset'])} of {math['n']} math elements not typeset by MathJax, "
                            f"e.g. {math['untypeset'][:3]}")
        if math["n"] and not page.evaluate("() => !!window.MathJax"):
            problems.append("the page has math but MathJax did not load")

        _check_plotly(page, problems)
        _check_animations(page, problems)

        dead = page.evaluate(_DEAD_WIDGETS)
        if dead["views"] or dead["ranges"]:
            problems.append(f"live widgets on a static page ({dead['views']} widget views, {dead['ranges']} range "
                            "inputs): tag widget cells `remove-cell` and show a static figure instead")
        launch = page.evaluate(_LAUNCH_LINKS)
        if launch and REPO_IS_PLACEHOLDER:
            problems.append(f"launch buttons {launch} while repository.url in _config.yml is the placeholder "
                            f"{PLACEHOLDER_URL}: a reader's click would meet a failing install cell")
        text = page.inner_text("main") if page.query_selector("main") else page.inner_text("body")
        for pattern, what in _RAW_TEXT:
            m = pattern.search(text)
            if m:
                problems.append(f"{what} in the page text: ...{text[max(0, m.start() - 40):m.end() + 40]!r}...")
        page.wait_for_timeout(100)  # let late console messages arrive
        # measured before the screenshots below, whose temporary resizing makes plotly's figures redraw
        _check_layout(page, problems)
        stem = page_path.replace("/", "_")[:-5]
        # each interactive figure on its own (after its slider was moved), to check at a glance that it drew; before
        # the full-page shot, whose temporary resize makes plotly's responsive figures redraw
        for i, element in enumerate(page.query_selector_all(".plotly-graph-div, div.animation")):
            element.screenshot(path=str(screenshots / f"{stem}.figure{i}.png"))
        page.evaluate("() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); }")
        page.screenshot(path=str(screenshots / f"{stem}.png"), full_page=True)
        _check_phone(page, problems, screenshots / f"{stem}.phone.png")
    finally:
        context.close()
    assert not problems, f"{page_path}:\n  " + "\n  ".join(dict.fromkeys(problems))


def _check_plotly(page, problems):
    if not page.query_selector(".plotly-graph-div"):
        return
    try:
        page.wait_for_function("() => [...document.querySelectorAll('.plotly-graph-div')]"
                               ".every(gd => gd._fullLayout && gd.querySelector('svg.main-svg'))")
    except Exception:  # noqa: BLE001 (reported below, figure by figure)
        pass
    page.wait_for_timeout(300)  # WebGL scenes draw a frame after newPlot resolves
    for fig in page.evaluate(_PLOTLY_STATE):
        name = f"plotly figure {fig['id']}"
        if not (fig["ready"] and fig["svg"]):
            problems.append(f"{name} was not drawn (is plotly.js loaded? {fig})")
            continue
        if fig["gl3d"] and (fig["canvases"] == 0 or fig["nodata"]):
            problems.append(f"{name}: its 3-D scene has no WebGL canvas ({fig})")
        elif not fig["gl3d"] and fig["marks"] == 0 and fig["canvases"] == 0:
            problems.append(f"{name} has axes but no plotted data ({fig})")
        if fig["sliders"] and fig["frames"] > 1:
            _move_slider(page, fig["id"], problems)


def _move_slider(page, div_id, problems):
    """Click the right end of the figure's first slider rail, as a reader would, and check the picture changed."""
    before = page.evaluate(_PLOTLY_PICTURE, div_id)
    active_before = page.evaluate(_SLIDER_ACTIVE, div_id)
    rail = page.query_selector(f"#{div_id} .slider-container .slider-rail-touch-rect")
    if rail is not None:
        rail.scroll_into_view_if_needed()
    box = rail.bounding_box() if rail else None
    if box is None:
        problems.append(f"plotly figure {div_id}: slider rail not found or not visible")
        return
    at_start = active_before in (None, 0)  # move to the far end from where the slider is
    page.mouse.click(box["x"] + (box["width"] - 3 if at_start else 3), box["y"] + box["height"] / 2)
    deadline = time.monotonic() + 5
    after = before
    while time.monotonic() < deadline:
        page.wait_for_timeout(150)
        after = page.evaluate(_PLOTLY_PICTURE, div_id)
        if after != before:
            break
    active_after = page.evaluate(_SLIDER_ACTIVE, div_id)
    if active_after == active_before:
        problems.append(f"plotly figure {div_id}: clicking the slider did not move it (active {active_before})")
    if after == before:
        problems.append(f"plotly figure {div_id}: moving the slider (step {active_before} -> {active_after}) did "
                        "not change the picture")


def _check_animations(page, problems):
    for anim in page.evaluate(_ANIMATIONS):
        name = f"animation #{anim['i']}"
        if not (anim["img"] and anim["src"].startswith("data:image") and anim["slider"] and anim["buttons"] >= 5):
            problems.append(f"{name} lacks its image, slider or buttons ({dict(anim, src=anim['src'][:30])})")
            continue
        player = page.locator("div.animation").nth(anim["i"])
        player.locator("button[title='Pause']").click()
        player.locator("button[title='First frame']").click()
        first = player.locator("img").get_attribute("src")
        player.locator("button[title='Last frame']").click()
        last = player.locator("img").get_attribute("src")
        if first == last:
            problems.append(f"{name}: its first and last frames show the same image")
