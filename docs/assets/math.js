// Typeset the math of every page with KaTeX (vendored in assets/katex, nothing from another host).
// Markdown pages: pymdownx.arithmatex wraps math in .arithmatex as \( \) and \[ \].
// Lessons: nbconvert leaves $...$ and $$...$$ as text in the rendered markdown cells.
// A formula KaTeX cannot parse is logged with console.error (the browser test fails on it).
(function () {
  function typeset(root) {
    root.querySelectorAll(".arithmatex, .jp-RenderedMarkdown").forEach(function (el) {
      renderMathInElement(el, {
        delimiters: [
          { left: "$$", right: "$$", display: true },
          { left: "\\[", right: "\\]", display: true },
          { left: "$", right: "$", display: false },
          { left: "\\(", right: "\\)", display: false },
        ],
        throwOnError: true,
        errorCallback: function (msg, err) {
          console.error(msg, err);
        },
      });
    });
    document.documentElement.setAttribute("data-math-typeset", "true");
  }
  if (typeof document$ !== "undefined") {
    document$.subscribe(function () {
      typeset(document.body);
    });
  } else {
    document.addEventListener("DOMContentLoaded", function () {
      typeset(document.body);
    });
  }
})();
