// stepq report: details of a clicked bar or step, jumping between them, and the filter.
(function () {
  "use strict";
  var details = document.getElementById("details");
  var chart = document.getElementById("chart");
  var rows = {};
  document.querySelectorAll("#steps tbody tr").forEach(function (tr) {
    rows[tr.getAttribute("data-step")] = tr;
  });
  var selected = null;
  var lit = null;
  function highlight(key, scroll) {
    if (lit) lit.classList.remove("hl");
    lit = rows[key] || null;
    if (lit) {
      lit.classList.add("hl");
      if (scroll) lit.scrollIntoView({ block: "center" });
    }
  }
  function bars(key) {
    return Array.prototype.filter.call(chart.querySelectorAll("g.a"), function (g) {
      return g.getAttribute("data-s") === key;
    });
  }
  function show(key) {
    var found = bars(key);
    if (selected) selected.forEach(function (g) { g.classList.remove("sel"); });
    selected = found;
    found.forEach(function (g) { g.classList.add("sel"); });
    var text = found.map(function (g) { return g.querySelector("title").textContent; });
    var tr = rows[key];
    if (!text.length && tr) {
      var cells = tr.querySelectorAll("td");
      text.push(key + " · " + cells[1].textContent + (cells[6].textContent ? "\n" + cells[6].textContent : ""));
    }
    details.textContent = text.join("\n\n") || key;
  }
  chart.addEventListener("click", function (e) {
    var g = e.target.closest("g.a");
    if (!g) return;
    var key = g.getAttribute("data-s");
    show(key);
    highlight(key, false);
  });
  document.addEventListener("click", function (e) {
    var a = e.target.closest("[data-goto]");
    if (a) {
      e.preventDefault();
      var key = a.getAttribute("data-goto");
      show(key);
      highlight(key, true);
      return;
    }
    var tr = e.target.closest("#steps tbody tr");
    if (tr) {
      show(tr.getAttribute("data-step"));
      highlight(tr.getAttribute("data-step"), false);
      details.scrollIntoView({ block: "nearest" });
    }
  });
  var filter = document.getElementById("filter");
  var timer = null;
  filter.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(function () {
      var q = filter.value.toLowerCase();
      Object.keys(rows).forEach(function (key) {
        var tr = rows[key];
        tr.style.display = !q || tr.textContent.toLowerCase().indexOf(q) >= 0 ? "" : "none";
      });
    }, 150);
  });
})();
