"""``ckpt ui`` in a real browser: headless Chromium (Debian's package) driven by Playwright, against the
real command serving stores made by the real training loop.

What a user would notice: a run training in another process shows up and advances without a reload;
runs -> run -> checkpoint -> diff navigation; a fine-tune's edge in the lineage graph, and its link;
the curves' pruned epochs; the retention plan equal to ``prune --dry-run``; writes refused without
--allow-writes and guarded by a CSRF token with it; no credentials on any page; an S3 + PostgreSQL
store; and that only the diff page imports torch.

Screenshots of each page go to $CKPT_UI_SCREENSHOTS when set (docs/ui/ holds the committed ones).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from ckpt import CheckpointStore

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "helpers"))
from ui_server import UiServer, start_ui  # noqa: E402

HELPER = os.path.join(HERE, "helpers", "ui_store.py")
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = os.environ.get("CKPT_UI_SCREENSHOTS")


def browser_missing() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return (f"{CHROMIUM} not found: `bash scripts/bootstrap.sh test` installs Debian's chromium when run as "
                f"root with apt-get (or: apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"playwright is not installed ({exc}): pip install -e '.[test]'"
    return None


def helper(*args: str, timeout: float = 300) -> None:
    out = subprocess.run([sys.executable, HELPER, *args], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]


def shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    if SHOTS:
        os.makedirs(SHOTS, exist_ok=True)
        page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


# -- fixtures ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> str:
    """pretrain (6 epochs, keep_last=2), finetune (from pretrain:best, tagged paper-v1), a failed run and a
    crashed run, all saved by the real training loop."""
    loc = str(tmp_path_factory.mktemp("ui") / "store")
    helper("build", loc)
    helper("crash", loc, "crashed-run")
    return loc


@pytest.fixture(scope="module")
def ro(sample):  # type: ignore[no-untyped-def]
    srv = start_ui(sample)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):  # type: ignore[no-untyped-def]
    why = browser_missing()
    if why:
        print(f"\nbrowser tests skipped: {why}")
        pytest.skip(why)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1280, "height": 900})
        ctx.set_default_timeout(30_000)
        yield ctx
        ctx.close()


@pytest.fixture
def page(browser):  # type: ignore[no-untyped-def]
    p = browser.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    yield p
    p.close()
    assert errors == [], f"JavaScript errors: {errors}"


def rows_of(page, table: str, attr: str) -> list[str]:  # type: ignore[no-untyped-def]
    return page.locator(f"#{table} tbody tr:not([hidden])").evaluate_all(
        f"rs => rs.map(r => r.getAttribute('{attr}')).filter(x => x !== null)")


# -- runs page ---------------------------------------------------------------------------------------

def test_a_run_training_in_another_process_appears_and_advances_without_reload(browser, page, tmp_path):
    loc = str(tmp_path / "live")
    CheckpointStore(loc).close()  # an existing store whose index no writer has open: opened immutable
    srv = start_ui(loc)
    trainer = None
    try:
        page.goto(srv.url)
        page.evaluate("window.__sameDocument = 42")
        assert page.locator("#runs-table tbody tr.empty").count() == 1
        trainer = subprocess.Popen([sys.executable, HELPER, "train", loc, "live-run", "6", "0.6"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        row = '#runs-table tr[data-run="live-run"]'
        page.wait_for_function(f"""() => {{ const td = document.querySelector('{row} td.epoch');
                                   return td && parseInt(td.textContent) >= 2 }}""", timeout=90_000)
        # the same snapshot of the row: polled while the trainer still had epochs to go
        assert page.locator(f"{row} .badge").inner_text() == "running"
        assert int(page.locator(f"{row} td.count").inner_text()) >= 3
        out, err = trainer.communicate(timeout=120)
        assert trainer.returncode == 0, err[-3000:]
        page.wait_for_function(f"""() => {{ const r = document.querySelector('{row}');
                                   return r && r.querySelector('td.epoch').textContent.trim() === '5'
                                   && r.querySelector('.badge').textContent === 'completed' }}""", timeout=30_000)
        assert page.locator(f"{row} td.count").inner_text() == "6"
        assert page.evaluate("window.__sameDocument") == 42  # no reload happened
        assert page.evaluate("window.ckptUiUpdates") >= 2
    finally:
        if trainer is not None and trainer.poll() is None:
            trainer.kill()
        srv.stop()


def test_runs_page_sorts_filters_and_keeps_both_across_refreshes(ro, page, sample):
    with CheckpointStore(sample, readonly=True) as store:
        runs = store.runs()
    page.goto(ro.url)
    assert set(rows_of(page, "runs-table", "data-run")) == {r.name for r in runs}
    statuses = dict(zip(rows_of(page, "runs-table", "data-run"), rows_of(page, "runs-table", "data-status")))
    assert statuses == {r.name: r.status for r in runs}
    assert statuses["crashed-run"] == "crashed" and statuses["failed-run"] == "failed"
    page.click('#runs-table th:has-text("best")')  # numbers: highest first, missing last
    by_best = sorted(runs, key=lambda r: (r.best_value is None, -(r.best_value or 0)))
    assert rows_of(page, "runs-table", "data-run")[:3] == [r.name for r in by_best][:3]
    assert rows_of(page, "runs-table", "data-run")[-1] == "crashed-run"  # no objective, no best
    page.click('#runs-table th:has-text("run")')
    assert rows_of(page, "runs-table", "data-run") == sorted(r.name for r in runs)
    page.fill("#runs-filter", "tune")
    assert rows_of(page, "runs-table", "data-run") == ["finetune"]
    page.fill("#runs-filter", "")
    page.select_option("#runs-status", "crashed")
    assert rows_of(page, "runs-table", "data-run") == ["crashed-run"]
    before = page.evaluate("window.ckptUiUpdates || 0")
    page.wait_for_function(f"() => (window.ckptUiUpdates || 0) > {before}", timeout=10_000)  # a poll replaced rows
    assert rows_of(page, "runs-table", "data-run") == ["crashed-run"]
    page.select_option("#runs-status", "")
    assert rows_of(page, "runs-table", "data-run") == sorted(r.name for r in runs)  # still sorted by name
    shot(page, "runs")


def test_runs_page_numbers_are_the_stores(ro, sample):
    status, html, _ = ro.get("/fragment/runs")
    assert status == 200
    with CheckpointStore(sample, readonly=True) as store:
        for r in store.runs():
            row = re.search(rf'<tr data-run="{re.escape(r.name)}".*?</tr>', html).group(0)
            assert f'class="count num" data-v="{r.checkpoints}"' in row
            assert f'class="epoch num" data-v="{r.latest_epoch!r}"' in row
            infos = store.list(run=r.name)
            assert f'class="held num" data-v="{sum(i.logical_size for i in infos)}"' in row
            assert f'class="new num" data-v="{sum(i.new_bytes for i in infos)}"' in row
            if r.best_value is not None:
                assert f'class="best num" data-v="{r.best_value!r}"' in row


# -- run, checkpoint, diff ---------------------------------------------------------------------------

def test_navigate_runs_run_checkpoint_diff(ro, page, browser, sample):
    with CheckpointStore(sample, readonly=True) as store:
        ft = store.list(run="finetune")
        pre_best = store.get("pretrain:best")
    page.goto(ro.url)
    page.click('#runs-table a.run-name:text-is("finetune")')
    page.wait_for_url(re.compile(r"/run\?name=finetune$"))
    assert page.locator("#metrics-chart g.series").count() >= 2  # several metrics on one chart
    assert page.locator("#metrics-chart .best-mark").count() >= 1
    assert rows_of(page, "checkpoints-table", "data-id") == [i.id for i in reversed(ft)]
    assert "keep: latest" in page.locator("#checkpoints-table").inner_text()
    assert "started from" in page.locator("dl.facts").inner_text()
    # checkpoint page: the first fine-tune checkpoint shares the frozen backbone with the pretrain run
    page.click(f'#checkpoints-table tr[data-id="{ft[0].id}"] a.ckpt-id')
    page.wait_for_url(re.compile(rf"/checkpoint\?id={ft[0].id}$"))
    where = dict(zip(page.locator("tr.tensor").evaluate_all("rs => rs.map(r => r.dataset.key)"),
                     page.locator("tr.tensor td.where").all_inner_texts()))
    assert where["model/backbone.0.weight"] == f"shared with run pretrain (pretrain@{pre_best.epoch})"
    assert where["model/head.weight"] == "stored here"
    commands = page.locator(".copy pre").first.inner_text()
    assert f"restore {ft[0].id}" in commands and f"export {ft[0].id} -o model.safetensors" in commands
    browser.grant_permissions(["clipboard-read", "clipboard-write"], origin=ro.url.rstrip("/"))
    page.locator(".copy button[data-copy]").first.click()
    page.wait_for_function("() => document.querySelector('.copy button[data-copy]').textContent === 'copied'")
    assert page.evaluate("navigator.clipboard.readText()") == commands
    assert f"CheckpointStore({sample!r}, readonly=True)" in page.locator(".copy pre").nth(1).inner_text()
    shot(page, "checkpoint")
    # back to the run; pick two checkpoints and diff them
    page.go_back()
    page.check(f'#checkpoints-table tr[data-id="{ft[0].id}"] input.pick')
    page.check(f'#checkpoints-table tr[data-id="{ft[-1].id}"] input.pick')
    page.click("#compare-picked")
    page.wait_for_url(re.compile(r"/diff\?a="))
    metrics = page.locator("#diff-metrics tbody tr").evaluate_all("rs => rs.map(r => r.dataset.metric)")
    assert set(metrics) == set(ft[0].metrics)
    assert int(page.locator("#identical-count").inner_text()) >= 4  # the frozen backbone, unread
    changed = page.locator("#diff-tensors tbody tr").evaluate_all("rs => rs.map(r => r.dataset.key)")
    assert "model/head.weight" in changed and not any(k.startswith("model/backbone") for k in changed)
    rel = [float(x) for x in page.locator("#diff-tensors tbody tr td:nth-child(2)").all_inner_texts() if x != "-"]
    assert rel == sorted(rel, reverse=True)  # ranked by relative L2
    shot(page, "diff")


def test_diff_page_form_accepts_selectors(ro, page):
    page.goto(ro.url + "diff")
    page.fill("#diff-a", "pretrain:best")
    page.fill("#diff-b", "paper-v1")
    page.click(".diff-form button")
    page.wait_for_selector("#identical-count")
    assert "pretrain@" in page.locator("table.pair").inner_text()
    page.goto(ro.url + "diff?a=nosuchthing&b=latest")
    assert "nosuchthing" in page.locator("#error-message").inner_text()


def test_history_curve_keeps_pruned_epochs(ro, page, sample):
    with CheckpointStore(sample, readonly=True) as store:
        kept = store.list(run="pretrain")
    assert len(kept) < 6  # keep_last=2 pruned some of the 6 epochs
    page.goto(ro.url + "run?name=pretrain")
    shot(page, "run")
    page.goto(ro.url + "run?name=pretrain&m=val_acc&m=val_loss")
    series = page.locator('#metrics-chart g.series[data-metric="val_loss"]')
    points = series.locator("polyline").get_attribute("points").split()
    assert len(points) == 6  # every epoch, from the history in the newest checkpoint
    assert series.locator("a.pt").count() == len(kept)  # the checkpoints still stored, as dots
    assert "pruned epochs included" in page.locator("figcaption").inner_text()


def test_retention_plan_is_prune_dry_run(ro, sample):
    with CheckpointStore(sample, readonly=True) as store:
        plan = store.prune(dry_run=True, keep_last=1, run="finetune")
    status, html, _ = ro.get("/run?name=finetune&keep_last=1")
    assert status == 200
    shown = dict(re.findall(r'<tr data-id="([0-9a-f]{32})" data-epoch="\d+" class="plan-(keep|remove)">', html))
    assert shown == {**{i.id: "keep" for i in plan.keep}, **{i.id: "remove" for i in plan.remove}}
    assert plan.remove and f"remove <b>{len(plan.remove)}</b>" in html
    assert "ckpt prune --run finetune --keep-last 1 --dry-run" in html


# -- lineage -----------------------------------------------------------------------------------------

def test_lineage_of_a_finetune(ro, page, sample):
    with CheckpointStore(sample, readonly=True) as store:
        first = store.list(run="finetune")[0]
        parent = store.get(first.parent)
    assert parent.run == "pretrain"
    page.goto(ro.url + "lineage")
    edge = page.locator(f'#lineage-graph path.edge.cross[data-from="{parent.id}"][data-to="{first.id}"]')
    assert edge.count() == 1
    assert page.locator(f'#lineage-edges tr[data-from="{parent.id}"][data-to="{first.id}"]').count() == 1
    shot(page, "lineage")
    page.locator(f'#lineage-graph a.node[data-id="{parent.id}"]').click()
    page.wait_for_url(re.compile(rf"/checkpoint\?id={parent.id}$"))
    assert f"pretrain@{parent.epoch}" in page.locator("h1").inner_text()
    assert "finetune@0" in page.locator("dl.facts").inner_text()  # its child, in another run
    page.goto(ro.url + "lineage?run=finetune")
    lanes = page.locator("#lineage-graph g.lane").evaluate_all("gs => gs.map(g => g.dataset.run)")
    assert lanes == ["pretrain", "finetune"]  # the connected runs, the fine-tune right below
    page.goto(ro.url + "run?name=pretrain")
    assert "finetune" in page.locator("dl.facts").inner_text()  # "branched into"


# -- writes -------------------------------------------------------------------------------------------

def test_writes_are_refused_without_allow_writes(ro, page, sample):
    with CheckpointStore(sample, readonly=True) as store:
        target = store.get("finetune:latest")
        tags = {i.id: i.tags for i in store.list()}
    page.goto(ro.url + f"checkpoint?id={target.id}")
    assert page.locator("form[method=post]").count() == 0 and page.locator("section.writes").count() == 0
    assert page.locator(".mode").inner_text() == "read-only"
    for action, form in (("tag", {"id": target.id, "name": "nope"}), ("untag", {"name": "paper-v1"}),
                         ("rm", {"id": target.id})):
        status, body, _ = ro.post(f"/action/{action}", {**form, "csrf": "x"}, {"Origin": f"http://{ro.host}"})
        assert status == 403 and "--allow-writes" in body, (action, status)
    with CheckpointStore(sample, readonly=True) as store:
        assert {i.id: i.tags for i in store.list()} == tags


def test_writes_with_allow_writes_need_the_csrf_token(browser, page, sample, tmp_path):
    loc = str(tmp_path / "w")
    shutil.copytree(sample, loc)
    srv = start_ui(loc, "--allow-writes")
    try:
        with CheckpointStore(loc, readonly=True) as store:
            ft = store.list(run="finetune")
        target = ft[1]
        page.goto(srv.url + f"checkpoint?id={target.id}")
        assert page.locator(".mode").inner_text() == "writes allowed"
        page.fill("form.tag-form input[name=name]", "from-ui")
        page.click("form.tag-form button")
        page.wait_for_selector(".notice")
        assert page.locator(".notice").inner_text() == "tagged as from-ui"
        with CheckpointStore(loc, readonly=True) as store:
            assert [i.id for i in store.list(tag="from-ui")] == [target.id]
        page.click('form.untag button:has-text("untag from-ui")')
        page.wait_for_selector(".notice:has-text('removed tag from-ui')")
        with CheckpointStore(loc, readonly=True) as store:
            assert store.list(tag="from-ui") == []
        page.once("dialog", lambda d: d.accept())
        page.click("form.rm-form button")
        page.wait_for_url(re.compile(r"/run\?name=finetune"))
        assert "removed checkpoint" in page.locator(".notice").inner_text()
        with CheckpointStore(loc, readonly=True) as store:
            assert target.id not in {i.id for i in store.list()}
        # the token: in the page and in a SameSite=Strict cookie, both required
        status, html, headers = srv.get(f"/checkpoint?id={ft[0].id}")
        token = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
        cookie = headers["set-cookie"].split(";")[0]
        assert "SameSite=Strict" in headers["set-cookie"] and "HttpOnly" in headers["set-cookie"]
        form = {"id": ft[0].id, "name": "by-script"}
        origin = {"Origin": f"http://{srv.host}"}
        assert srv.post("/action/tag", form, {**origin, "Cookie": cookie})[0] == 403  # no token in the form
        assert srv.post("/action/tag", {**form, "csrf": token}, origin)[0] == 403  # no cookie
        assert srv.post("/action/tag", {**form, "csrf": token + "x"}, {**origin, "Cookie": cookie})[0] == 403
        assert srv.post("/action/tag", {**form, "csrf": token},
                        {"Origin": "http://evil.example", "Cookie": cookie})[0] == 403
        assert srv.post("/action/tag", {**form, "csrf": token},
                        {**origin, "Cookie": cookie, "Sec-Fetch-Site": "cross-site"})[0] == 403
        with CheckpointStore(loc, readonly=True) as store:
            assert store.list(tag="by-script") == []
        status, _, headers = srv.post("/action/tag", {**form, "csrf": token}, {**origin, "Cookie": cookie})
        assert status == 303 and headers["location"].startswith("/checkpoint?id=")
        with CheckpointStore(loc, readonly=True) as store:
            assert [i.id for i in store.list(tag="by-script")] == [ft[0].id]
    finally:
        srv.stop()


# -- security and credentials ------------------------------------------------------------------------

def test_foreign_host_headers_are_refused(ro):
    assert ro.get("/", Host="evil.example")[0] == 421  # DNS rebinding
    assert ro.get("/", Host=f"evil.example:{ro.host.split(':')[1]}")[0] == 421
    assert ro.get("/", Host=f"localhost:{ro.host.split(':')[1]}")[0] == 200
    status, _, headers = ro.get("/")
    assert "frame-ancestors 'none'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
    assert ro.get("/static/../app.py")[0] == 404


def test_security_helpers():
    from ckpt.ui.security import Guard, display_index, display_location, redact_options, scrub, secrets_in
    assert display_location("s3://AKIA:sekrit@bucket/x") == "s3://bucket/x"
    assert "pw" not in display_index("postgresql+psycopg://u:pw@host/db")
    opts = {"key": "AKIA", "secret": "sekrit", "client_kwargs": {"aws_session_token": "tok", "region_name": "x"}}
    assert redact_options(opts) == {"key": "***", "secret": "***",
                                    "client_kwargs": {"aws_session_token": "***", "region_name": "x"}}
    hidden = secrets_in("postgresql://u:pw-123@h/db", "s3://b/x", opts)
    assert scrub("failed: pw-123 sekrit tok AKIA", hidden) == "failed: *** *** *** ***"
    g = Guard("127.0.0.1", 8765)
    assert g.host_ok("127.0.0.1:8765") and g.host_ok("localhost:8765") and g.host_ok("[::1]:8765")
    assert not g.host_ok("127.0.0.1:8766") and not g.host_ok("example.com:8765") and not g.host_ok(None)
    assert Guard("0.0.0.0", 1).host_ok("anything:1")


def test_s3_and_postgres_store(browser, page, s3_url, pg_url):
    password = "pw-s3cr3t-9317"
    index = pg_url.replace("postgres@", f"postgres:{password}@", 1)  # trust auth: any password is accepted
    assert password in index
    helper("build", s3_url, index)
    srv = start_ui(s3_url, "--index", index)  # the ui command's own --index
    try:
        page.goto(srv.url)
        assert set(rows_of(page, "runs-table", "data-run")) == {"pretrain", "finetune", "failed-run"}
        page.click('#runs-table a.run-name:text-is("pretrain")')
        page.wait_for_url(re.compile(r"/run\?name=pretrain$"))
        assert len(page.locator('#metrics-chart g.series[data-metric="val_acc"] polyline')
                   .get_attribute("points").split()) == 6
        with CheckpointStore(s3_url, index=index, readonly=True) as store:
            kept = store.list(run="pretrain")
            ft = store.list(run="finetune")
        assert rows_of(page, "checkpoints-table", "data-id") == [i.id for i in reversed(kept)]
        assert s3_url in page.locator("header .store").inner_text()
        for path in ("/", "/run?name=finetune", "/lineage", f"/checkpoint?id={ft[0].id}", "/run?name=nosuch",
                     "/fragment/runs"):
            status, html, _ = srv.get(path)
            assert status in (200, 404) and password not in html, path
        assert password not in page.content()
    finally:
        srv.stop()


def test_hostile_names_are_shown_as_text(page, tmp_path):
    import torch
    name = "<img src=x onerror=alert(1)>&\"'"
    loc = str(tmp_path / "h")
    with CheckpointStore(loc) as store:
        store.save(name, 0, {"w": torch.zeros(2)}, {"<b>m</b>": 1.0})
        store.save(name, 1, {"w": torch.ones(2)}, {"<b>m</b>": 2.0})
        store.tag(f"{name}@0", "<i>t</i>")
        cid = store.get(f"{name}@1").id
    srv = start_ui(loc)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        page.goto(srv.url)
        assert page.locator("#runs-table a.run-name").inner_text() == name
        page.locator("#runs-table a.run-name").click()
        page.wait_for_selector("#metrics-chart")
        assert "<b>m</b>" in page.locator("#metrics-chart").text_content()
        assert page.locator("#checkpoints-table .tag").inner_text() == "<i>t</i>"
        for path in ("lineage", f"checkpoint?id={cid}", f"diff?a={cid}&b=%3Ci%3Et%3C%2Fi%3E"):
            page.goto(srv.url + path)
            # nothing the names held became markup
            assert page.locator("img, i").count() == 0, path
            assert page.locator("b", has_text=re.compile(r"^m$")).count() == 0, path
        assert dialogs == []
    finally:
        srv.stop()


# -- the command itself ------------------------------------------------------------------------------

def test_only_the_diff_page_imports_torch(sample):
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("needs /proc (Linux)")
    with CheckpointStore(sample, readonly=True) as store:
        a, b = store.list(run="finetune")[0], store.get("finetune:latest")
    srv = start_ui(sample)  # a fresh server: no page has been asked for yet
    try:
        maps = f"/proc/{srv.proc.pid}/maps"
        for path in ("/", "/fragment/runs", "/run?name=pretrain", "/lineage", f"/checkpoint?id={a.id}",
                     "/diff", "/fragment/run?name=finetune"):
            assert srv.get(path)[0] == 200, path
        assert "libtorch" not in open(maps).read()
        assert srv.get(f"/diff?a={a.id}&b={b.id}")[0] == 200
        assert "libtorch" in open(maps).read()  # the check can see torch when it is there
    finally:
        srv.stop()


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ckpt.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={k: v for k, v in os.environ.items() if k != "CKPT_STORE"})


def test_cli_errors_are_one_line(tmp_path, sample):
    res = run_cli("ui")
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "CKPT_STORE" in res.stderr
    res = run_cli("ui", "--store", str(tmp_path / "nostore"))
    assert res.returncode == 2 and "no ckpt store" in res.stderr and not (tmp_path / "nostore").exists()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        res = run_cli("--store", sample, "ui", "--port", str(s.getsockname()[1]))
    assert res.returncode == 2 and "--port 0" in res.stderr and len(res.stderr.splitlines()) == 1


def test_listening_on_every_interface_warns(sample):
    srv = start_ui(sample, "--host", "0.0.0.0")
    try:
        time.sleep(0.2)
        assert "warning: --host 0.0.0.0" in srv.stderr() and "every machine" in srv.stderr()
        assert srv.get("/")[0] == 200
    finally:
        srv.stop()
