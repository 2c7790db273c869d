// The widget manager (embed-amd.js) loads its icon fonts from the folder of its AMD module's URL, which require.js
// resolves against the page's own folder by default (nbs/@jupyter-widgets/html-manager/dist/*.woff2: 404 offline).
// Map that module name to _static/widgets/, where `make book` copies the manager and its fonts.
(function () {
  var here = document.currentScript.src;
  var widgets = here.slice(0, here.lastIndexOf("/") + 1) + "widgets";
  require.config({ paths: { "@jupyter-widgets/html-manager/dist": widgets } });
})();
