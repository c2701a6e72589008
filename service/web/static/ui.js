// Sync Health's one script, served from /ui/static/ui.js (the CSP allows scripts from 'self' only).
// Progressive: every page reads the same without it (times in UTC, no auto-refresh).
(function () {
  "use strict";
  var REFRESH_KEY = "codat-relay.ui.auto-refresh";
  var UNITS = [["year", 31536000], ["month", 2592000], ["week", 604800], ["day", 86400],
               ["hour", 3600], ["minute", 60], ["second", 1]];
  var relative = window.Intl && Intl.RelativeTimeFormat ? new Intl.RelativeTimeFormat(undefined, {numeric: "auto"}) : null;

  function ago(seconds) {
    for (var i = 0; i < UNITS.length; i++) {
      var n = seconds / UNITS[i][1];
      if (Math.abs(n) >= 1 || UNITS[i][0] === "second") {
        var whole = Math.round(n);
        if (relative) { return relative.format(-whole, UNITS[i][0]); }
        return whole + " " + UNITS[i][0] + (whole === 1 ? "" : "s") + " ago";
      }
    }
    return "";
  }

  // <time datetime="…Z" title="… UTC">… UTC</time>: local time and "3 minutes ago"; UTC stays on hover.
  function localTimes() {
    var now = Date.now();
    document.querySelectorAll("time[datetime]").forEach(function (el) {
      var at = new Date(el.getAttribute("datetime"));
      if (isNaN(at.getTime())) { return; }
      if (!el.dataset.utc) { el.dataset.utc = el.textContent; }
      el.title = el.dataset.utc;
      el.textContent = at.toLocaleString(undefined, {dateStyle: "medium", timeStyle: "medium"}) +
        " (" + ago((now - at.getTime()) / 1000) + ")";
      el.classList.add("local");
    });
  }

  // Reloading under someone ticking a confirmation or typing a search would throw their work away.
  function busy() {
    var active = document.activeElement;
    if (active && active.id !== "auto-refresh" && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName)) { return true; }
    return document.querySelector("form input[type=checkbox][name=confirm]:checked") !== null;
  }

  function autoRefresh() {
    var box = document.getElementById("auto-refresh");
    if (!box) { return; }
    var timer = null;
    var period = 1000 * (Number(box.dataset.seconds) || 30);
    function schedule() {
      window.clearTimeout(timer);
      if (!box.checked) { return; }
      timer = window.setTimeout(function () {
        if (busy()) { schedule(); return; }
        var url = new URL(window.location.href);
        url.searchParams.delete("flash");  // the message was for the press, not for every refresh
        window.location.replace(url.toString());
      }, period);
    }
    box.checked = window.localStorage.getItem(REFRESH_KEY) === "on";
    box.addEventListener("change", function () {
      window.localStorage.setItem(REFRESH_KEY, box.checked ? "on" : "off");
      document.documentElement.dataset.autoRefresh = box.checked ? "on" : "off";
      schedule();
    });
    document.documentElement.dataset.autoRefresh = box.checked ? "on" : "off";
    box.closest("[hidden]") && box.closest("[hidden]").removeAttribute("hidden");
    schedule();
  }

  localTimes();
  autoRefresh();
  window.setInterval(localTimes, 30000);
}());
