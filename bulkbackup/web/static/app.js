// The only script: refreshes the dashboard's live section, sends the add-users form with
// its bearer token and the public add form with the session's CSRF token, and fills the
// logins autocomplete. Pages work without it (the add forms excepted).
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
  var publicForm = document.getElementById("public-add-form");
  if (publicForm) {
    publicForm.addEventListener("submit", function (event) {
      event.preventDefault();
      var out = document.getElementById("public-add-result");
      fetch("/api/users", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json",
                   "X-CSRF-Token": document.getElementById("public-add-csrf").value },
        body: JSON.stringify({ logins: [document.getElementById("public-add-login").value] })
      }).then(function (r) { return r.json(); }).then(function (doc) {
        out.textContent = doc.error ? doc.error
          : doc.added.length ? "added: " + doc.added.join(" ")
          : doc.existing.length ? "already tracked: " + doc.existing.join(" ")
          : "not on GitHub: " + doc.not_found.join(" ");
      }).catch(function () { out.textContent = "the server did not answer"; });
    });
  }
  // Tracked logins as one types (GET /api/logins: the search index, ten at most).
  var known = document.getElementById("known-logins");
  var asked = "";
  document.querySelectorAll("input[list=known-logins]").forEach(function (box) {
    box.addEventListener("input", function () {
      var prefix = box.value.trim();
      if (!/^[A-Za-z0-9-]{1,39}$/.test(prefix) || prefix === asked) return;
      asked = prefix;
      fetch("/api/logins?prefix=" + encodeURIComponent(prefix))
        .then(function (r) { return r.ok ? r.json() : { logins: [] }; })
        .then(function (doc) {
          if (asked !== prefix) return;
          known.replaceChildren.apply(known, doc.logins.map(function (login) {
            var option = document.createElement("option");
            option.value = login;
            return option;
          }));
        }).catch(function () {});
    });
  });
})();
