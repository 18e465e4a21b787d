// Typeset the formulas that pymdownx.arithmatex (generic mode) leaves in the page as
// <span class="arithmatex">\(...\)</span> and <div class="arithmatex">\[...\]</div>,
// with the KaTeX copy shipped in docs/javascripts/katex (no network needed).
function pbdeRenderMath(root) {
  root.querySelectorAll(".arithmatex").forEach(function (element) {
    var tex = element.textContent.trim();
    var display = tex.startsWith("\\[");
    katex.render(tex.slice(2, -2), element, {
      displayMode: display,
      throwOnError: false,
    });
  });
}

if (typeof document$ !== "undefined") {
  document$.subscribe(function () { pbdeRenderMath(document.body); });
} else {
  document.addEventListener("DOMContentLoaded", function () { pbdeRenderMath(document.body); });
}
