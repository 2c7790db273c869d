// The Jupyter widgets HTML manager typesets widget labels through the MathJax 2 API (MathJax.Hub.Queue);
// this book serves MathJax 3, which has no Hub. Give it a one-method Hub that forwards to MathJax 3.
(function () {
  function install() {
    var mj = window.MathJax;
    if (mj && !mj.Hub) {
      mj.Hub = {
        Queue: function () {
          if (window.MathJax.typesetPromise) { window.MathJax.typesetPromise(); }
        }
      };
    }
  }
  install();
  document.addEventListener("DOMContentLoaded", install);
  window.addEventListener("load", install);
})();
