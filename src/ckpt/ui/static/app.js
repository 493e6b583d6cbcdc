// ckpt ui: sorting, filtering, live refresh, copy buttons and checkpoint picks. No dependencies, no
// build step; the pages work without it (they are rendered on the server).
(function () {
  "use strict";
  var sortState = {}; // table id -> {col, dir, kind}

  function cellValue(td) {
    if (!td) return "";
    var v = td.getAttribute("data-v");
    return v === null ? td.textContent.trim() : v;
  }

  function sortTable(table) {
    var s = sortState[table.id];
    if (!s || !table.tBodies.length) return;
    var tbody = table.tBodies[0];
    var rows = Array.prototype.filter.call(tbody.rows, function (r) { return !r.classList.contains("empty"); });
    rows.sort(function (a, b) {
      var x = cellValue(a.cells[s.col]), y = cellValue(b.cells[s.col]);
      if (s.kind === "num") {
        var fx = x === "" ? NaN : parseFloat(x), fy = y === "" ? NaN : parseFloat(y);
        if (isNaN(fx) && isNaN(fy)) return 0;
        if (isNaN(fx)) return 1;   // missing values last, whatever the direction
        if (isNaN(fy)) return -1;
        return (fx - fy) * s.dir;
      }
      return x.localeCompare(y) * s.dir;
    });
    rows.forEach(function (r) { tbody.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.classList.remove("sorted-asc", "sorted-desc");
      th.removeAttribute("aria-sort");
      if (i === s.col) {
        th.classList.add(s.dir > 0 ? "sorted-asc" : "sorted-desc");
        th.setAttribute("aria-sort", s.dir > 0 ? "ascending" : "descending");
      }
    });
  }

  function filterTable(table) {
    if (!table.id || !table.tBodies.length) return;
    var box = document.querySelector('[data-filter="' + table.id + '"]');
    var sel = document.querySelector('[data-status-filter="' + table.id + '"]');
    var text = box ? box.value.trim().toLowerCase() : "";
    var status = sel ? sel.value : "";
    Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
      if (r.classList.contains("empty")) return;
      var ok = (!text || r.textContent.toLowerCase().indexOf(text) >= 0) &&
               (!status || r.getAttribute("data-status") === status);
      r.hidden = !ok;
    });
  }

  function refreshTables(root) {
    var tables = root.matches && root.matches("table") ? [root] : [];
    if (root.closest) { var t = root.closest("table"); if (t) tables.push(t); }
    Array.prototype.push.apply(tables, root.querySelectorAll ? root.querySelectorAll("table") : []);
    tables.forEach(function (t) { sortTable(t); filterTable(t); });
  }

  document.addEventListener("click", function (e) {
    var th = e.target.closest("th[data-sort]");
    if (th) {
      var table = th.closest("table");
      var col = Array.prototype.indexOf.call(th.parentNode.cells, th);
      var kind = th.getAttribute("data-sort");
      var s = sortState[table.id];
      var dir = s && s.col === col ? -s.dir : (kind === "num" ? -1 : 1);
      sortState[table.id] = {col: col, dir: dir, kind: kind};
      sortTable(table);
      return;
    }
    var copy = e.target.closest("[data-copy]");
    if (copy) {
      var pre = copy.closest(".copy").querySelector("pre");
      var text = pre.textContent;
      var done = function () { copy.textContent = "copied"; setTimeout(function () { copy.textContent = "copy"; }, 1500); };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () { fallbackCopy(text); done(); });
      } else { fallbackCopy(text); done(); }
      return;
    }
    if (e.target.id === "compare-picked") {
      var p = picked();
      if (p.length === 2) location.href = "/diff?a=" + encodeURIComponent(p[0]) + "&b=" + encodeURIComponent(p[1]);
    }
  });

  function fallbackCopy(text) {
    var ta = document.createElement("textarea");
    ta.value = text;
    document.body.appendChild(ta);
    ta.select();
    try { document.execCommand("copy"); } catch (err) { /* nothing more to try */ }
    document.body.removeChild(ta);
  }

  document.addEventListener("input", function (e) {
    var id = e.target.getAttribute("data-filter") || e.target.getAttribute("data-status-filter");
    if (id) { var t = document.getElementById(id); if (t) filterTable(t); }
  });
  function markDirty(e) {
    var region = e.target.closest && e.target.closest("[data-live]");
    if (region && e.target.form && !e.target.classList.contains("pick")) region.setAttribute("data-dirty", "1");
  }
  document.addEventListener("input", markDirty);
  document.addEventListener("change", markDirty);
  document.addEventListener("change", function (e) {
    var id = e.target.getAttribute("data-status-filter");
    if (id) { var t = document.getElementById(id); if (t) filterTable(t); }
    if (e.target.classList.contains("pick")) {
      var i = picks.indexOf(e.target.value);
      if (e.target.checked && i < 0) picks.push(e.target.value);
      if (!e.target.checked && i >= 0) picks.splice(i, 1);
      while (picks.length > 2) {
        var old = picks.shift();
        var box = document.querySelector('input.pick[value="' + old + '"]');
        if (box) box.checked = false;
      }
      updateCompare();
    }
  });
  document.addEventListener("submit", function (e) {
    var msg = e.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) e.preventDefault();
  });

  // checkpoints picked for a diff, in the order they were picked (kept across live refreshes)
  var picks = [];
  function picked() { return picks.slice(); }
  function updateCompare() {
    var b = document.getElementById("compare-picked");
    if (b) b.disabled = picks.length !== 2;
  }
  function restorePicks() {
    picks.forEach(function (id) {
      var box = document.querySelector('input.pick[value="' + id + '"]');
      if (box) box.checked = true;
    });
    updateCompare();
  }

  // live regions: poll their URL, replace the content when it changed
  function live(el) {
    var url = el.getAttribute("data-live");
    var every = parseInt(el.getAttribute("data-interval") || "2000", 10);
    var last = null;
    var indicator = document.querySelector("[data-live-indicator]");
    function mark(ok, title) {
      if (!indicator) return;
      indicator.classList.toggle("live-error", !ok);
      indicator.title = title;
    }
    function tick() {
      var busy = document.activeElement && el.contains(document.activeElement) &&
                 /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName) &&
                 document.activeElement.type !== "checkbox";
      // a form inside the region being edited (a metric unticked, a policy typed) is not replaced
      if (document.hidden || busy || el.getAttribute("data-dirty")) { setTimeout(tick, every); return; }
      fetch(url, {cache: "no-store", credentials: "same-origin"}).then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      }).then(function (html) {
        if (html !== last) {
          last = html;
          el.innerHTML = html;
          restorePicks();
          refreshTables(el);
          window.ckptUiUpdates = (window.ckptUiUpdates || 0) + 1;
        }
        mark(true, "updated " + new Date().toLocaleTimeString());
      }).catch(function (err) {
        mark(false, "cannot reach ckpt ui (" + err.message + "); retrying");
      }).then(function () { setTimeout(tick, every); });
    }
    setTimeout(tick, every);
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-live]"), live);
    restorePicks();
  });
})();
