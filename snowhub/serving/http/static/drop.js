// "Try it": drop image files anywhere on the page to upload them (the form works without this script).
(function () {
  "use strict";
  var form = document.getElementById("upload");
  var input = document.getElementById("files");
  if (!form || !input || !window.DataTransfer) { return; }
  Array.prototype.forEach.call(document.querySelectorAll(".js-only"), function (el) { el.hidden = false; });
  function over(event) { event.preventDefault(); document.body.classList.add("dropping"); }
  function leave() { document.body.classList.remove("dropping"); }
  document.addEventListener("dragover", over);
  document.addEventListener("dragenter", over);
  document.addEventListener("dragleave", function (event) { if (!event.relatedTarget) { leave(); } });
  document.addEventListener("drop", function (event) {
    event.preventDefault();
    leave();
    var files = event.dataTransfer && event.dataTransfer.files;
    if (!files || !files.length) { return; }
    var chosen = new DataTransfer();
    Array.prototype.forEach.call(files, function (file) { chosen.items.add(file); });
    input.files = chosen.files;
    form.submit();
  });
})();
