// The portal works without this file; it only adds what needs a script.
(function () {
  "use strict";
  // Print buttons (an invoice's "Print or save as PDF") stay hidden without a script.
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-print]").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () { window.print(); });
    });
  });
})();
