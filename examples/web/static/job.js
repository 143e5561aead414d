// Live progress of one job over server-sent events. Text goes in with
// textContent only, never as HTML.
"use strict";
(function () {
  const body = document.body;
  if (body.dataset.done === "true") return;
  const status = document.getElementById("status");
  const bar = document.getElementById("progress");
  const images = document.getElementById("images");
  const cancel = document.getElementById("cancel");
  const source = new EventSource("/jobs/" + encodeURIComponent(body.dataset.job) + "/events");
  source.addEventListener("status", (e) => { status.textContent = JSON.parse(e.data).text; });
  source.addEventListener("progress", (e) => {
    const p = JSON.parse(e.data);
    bar.max = p.total;
    bar.value = p.step;
    status.textContent = "Step " + p.step + " of " + p.total + "…";
  });
  source.addEventListener("image", (e) => {
    const i = JSON.parse(e.data);
    if (document.getElementById("image-" + i.index)) return;
    const img = document.createElement("img");
    img.id = "image-" + i.index;
    img.width = i.width;
    img.height = i.height;
    img.alt = "image " + i.index + ", seed " + i.seed;
    img.src = i.url;
    images.appendChild(img);
  });
  source.addEventListener("end", (e) => {
    const end = JSON.parse(e.data);
    status.textContent = end.text;
    status.className = end.error ? "error" : "done";
    if (!end.error) bar.value = bar.max;
    cancel.disabled = true;
    source.close();
  });
})();
