// MathJax 3 settings for pymdownx.arithmatex (generic mode): typeset only the formulas that
// arithmatex marked. MathJax itself is served from this site (assets/javascripts/mathjax/),
// so the formulas render offline.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

// MathJax typesets the page once it has loaded. Nothing re-typesets on a page change: the theme's
// instant navigation (`navigation.instant`) is off. Do not call MathJax.startup.output.clearCache()
// on load (mkdocs-material's example does, in a `document$` subscription): with MathJax served
// locally it runs after the first typesetting and drops the CSS of the characters, which then
// show as blanks.
