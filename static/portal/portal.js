// The portal works without this file; it only adds what needs a script.
(function () {
  "use strict";
  // Print buttons (an invoice's "Print or save as PDF") stay hidden without a script.
  // A chart bar focused, tapped or pointed at shows its value under the chart (the bar's
  // own label is what screen readers read). Delegated: htmx swaps the chart in place.
  function showBar(event) {
    var bar = event.target.closest && event.target.closest(".chart .bar[aria-label]");
    var out = document.getElementById("chart-focus");
    if (bar && out) { out.textContent = bar.getAttribute("aria-label"); }
  }
  ["focusin", "mouseover", "click"].forEach(function (name) {
    document.addEventListener(name, showBar);
  });
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-print]").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () { window.print(); });
    });
  });
})();
