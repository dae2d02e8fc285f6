// The only script: refreshes the dashboard's live section and sends the add-users form
// with its bearer token. Pages work without it.
"use strict";
(function () {
  var live = document.getElementById("live");
  if (live) {
    var seconds = parseInt(live.getAttribute("data-refresh"), 10) || 15;
    setInterval(function () {
      fetch(window.location.href, { headers: { Accept: "text/html" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (!html) return;
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById("live");
          if (fresh) live.replaceChildren.apply(live, Array.from(fresh.childNodes));
        })
        .catch(function () {});
    }, seconds * 1000);
  }
  var form = document.getElementById("add-form");
  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var out = document.getElementById("add-result");
      var logins = document.getElementById("add-logins").value.split(/[\s,]+/)
        .filter(function (x) { return x; });
      fetch("/api/users", {
        method: "POST",
        headers: { "Content-Type": "application/json",
                   Authorization: "Bearer " + document.getElementById("add-token").value },
        body: JSON.stringify({ logins: logins })
      }).then(function (r) { return r.json(); }).then(function (doc) {
        out.textContent = doc.error ? doc.error
          : "added: " + doc.added.join(" ") + "; already tracked: " + doc.existing.join(" ");
      }).catch(function () { out.textContent = "the server did not answer"; });
    });
  }
})();
