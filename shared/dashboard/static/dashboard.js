// rlq dashboard: live regions and confirmations. No framework; the pages work without it too.
(function () {
  "use strict";

  // Ask before an irreversible POST (Cancel, Resubmit).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  var main = document.querySelector("main[data-live]");
  if (!main) {
    return;
  }
  var url = main.getAttribute("data-live");
  var status = document.querySelector("[data-live-status]");
  var seen = {};
  var delay = 2000;

  function say(text) {
    if (status) {
      status.textContent = text;
    }
  }

  function swap(region, html) {
    if (seen[region.getAttribute("data-region")] === html) {
      return;
    }
    seen[region.getAttribute("data-region")] = html;
    var active = document.activeElement;
    var focusId = active && region.contains(active) ? active.id : null;
    region.innerHTML = html; // markup rendered and escaped by the server's templates
    if (focusId) {
      var again = document.getElementById(focusId);
      if (again) {
        again.focus();
      }
    }
  }

  function schedule() {
    window.setTimeout(tick, delay);
  }

  function tick() {
    if (document.hidden) {
      schedule();
      return;
    }
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (data) {
        var regions = data.regions || {};
        main.querySelectorAll("[data-region]").forEach(function (region) {
          var name = region.getAttribute("data-region");
          if (Object.prototype.hasOwnProperty.call(regions, name)) {
            swap(region, regions[name]);
          }
        });
        delay = data.next_poll_ms || 2000;
        if (data.settled) {
          main.removeAttribute("data-live");
          say("Final.");
          return;
        }
        say("Live · updated " + new Date().toLocaleTimeString());
        schedule();
      })
      .catch(function (err) {
        delay = Math.min(delay * 2, 30000);
        say("Live updates paused (" + err.message + "); retrying.");
        schedule();
      });
  }

  say("Live");
  schedule();
})();
