// Live job progress: an element with data-job="ID" follows /api/jobs/ID until it ends,
// then reloads the page (data-reload) so the finished state is rendered by the server.
(function () {
  document.querySelectorAll("[data-job]").forEach(function (box) {
    var id = box.getAttribute("data-job");
    var bar = box.querySelector("[data-job-progress]");
    var said = box.querySelector("[data-job-message]");
    function poll() {
      fetch("/api/jobs/" + encodeURIComponent(id), { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (job) {
          if (bar && job.total) { bar.max = job.total; bar.value = job.progress || 0; }
          if (said) { said.textContent = job.state + (job.message ? ": " + job.message : ""); }
          if (job.state === "queued" || job.state === "running") { setTimeout(poll, 1000); }
          else if (box.hasAttribute("data-reload")) { location.reload(); }
        })
        .catch(function () { setTimeout(poll, 3000); });
    }
    poll();
  });
})();
