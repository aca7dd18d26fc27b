"""The user-study page template (midre.userstudy.render_page fills __TITLE__ and __STUDY_JSON__).

Self-contained: inline CSS and JS, images arrive as data URIs inside the study JSON, nothing is
fetched.  Votes are kept in localStorage under ``midre-userstudy-<study id>`` and exported as JSON
(a download, and ``window.midreStudy.exportVotes()`` for scripts).  Keys: 1-4 answer (A, B, neither,
both) and move on; left / right arrows step between pairs.
"""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;max-width:900px;margin:1.5em auto;padding:0 1em;color:#222}
.row{display:flex;gap:2em;justify-content:center;margin:1em 0}
figure{margin:0;text-align:center}
figure img{width:192px;height:192px;image-rendering:pixelated;border:1px solid #999;background:#eee}
figure.private img{border:3px solid #333}
.answers,.nav{display:flex;gap:.7em;justify-content:center;margin:.8em 0}
button{font-size:1.05em;padding:.45em 1em;border-radius:6px;border:1px solid #777;background:#f6f6f6;cursor:pointer}
button.chosen{background:#2b6cb0;color:#fff;border-color:#2b6cb0}
#progress,#done,.help{text-align:center}
.help{color:#555;font-size:.9em}
</style></head>
<body>
<h1>__TITLE__</h1>
<p id="question" style="text-align:center;font-weight:600"></p>
<p class="help">Look at the private image, then at Image A and Image B. Keys: <b>1</b> Image A, <b>2</b> Image B,
<b>3</b> Neither, <b>4</b> Both; <b>&larr;</b>/<b>&rarr;</b> previous/next pair. Your answers stay in this browser
until you export them.</p>
<p style="text-align:center"><label>Your name or worker id: <input id="rater" autocomplete="off"></label></p>
<div id="progress"></div>
<div class="row">
  <figure class="private"><img id="img-private" alt="private image"><figcaption>Private image</figcaption></figure>
  <figure><img id="img-a" alt="image A"><figcaption>Image A</figcaption></figure>
  <figure><img id="img-b" alt="image B"><figcaption>Image B</figcaption></figure>
</div>
<div class="answers">
  <button id="btn-left" data-answer="left">1 &middot; Image A</button>
  <button id="btn-right" data-answer="right">2 &middot; Image B</button>
  <button id="btn-neither" data-answer="neither">3 &middot; Neither</button>
  <button id="btn-both" data-answer="both">4 &middot; Both</button>
</div>
<div class="nav">
  <button id="prev">&larr; Previous</button><button id="next">Next &rarr;</button>
  <button id="export">Export votes (JSON)</button>
</div>
<p id="done"></p>
<script id="study-data" type="application/json">__STUDY_JSON__</script>
<script>
(function () {
  "use strict";
  var S = JSON.parse(document.getElementById("study-data").textContent);
  var KEY = "midre-userstudy-" + S.study_id;
  var ANSWERS = ["left", "right", "neither", "both"];
  var state = load();
  function load() {
    try {
      var s = JSON.parse(localStorage.getItem(KEY));
      if (s && s.votes) { return s; }
    } catch (e) { /* unreadable storage: start over */ }
    return {rater: "rater-" + Math.random().toString(36).slice(2, 8), votes: {}, pos: 0};
  }
  function save() { localStorage.setItem(KEY, JSON.stringify(state)); }
  function answered() { return S.pairs.filter(function (p) { return state.votes[p.id]; }).length; }
  function show() {
    var p = S.pairs[state.pos];
    document.getElementById("question").textContent = S.question;
    document.getElementById("img-private").src = p["private"];
    document.getElementById("img-a").src = p.a;
    document.getElementById("img-b").src = p.b;
    document.getElementById("progress").textContent = "Pair " + (state.pos + 1) + " of " + S.pairs.length +
      " \u2014 answered " + answered();
    var v = state.votes[p.id];
    ANSWERS.forEach(function (a) {
      document.getElementById("btn-" + a).classList.toggle("chosen", !!v && v.answer === a);
    });
    document.getElementById("done").textContent = answered() === S.pairs.length ?
      "All pairs answered. Thank you! Please export your votes." : "";
    document.body.dataset.pos = String(state.pos);
    document.body.dataset.answered = String(answered());
  }
  function answer(a) {
    var p = S.pairs[state.pos];
    state.votes[p.id] = {answer: a, time: new Date().toISOString()};
    if (state.pos < S.pairs.length - 1) { state.pos += 1; }
    save(); show();
  }
  function go(d) { state.pos = Math.max(0, Math.min(S.pairs.length - 1, state.pos + d)); save(); show(); }
  function exportVotes() {
    return JSON.stringify({
      format: "midre-userstudy-votes", study_id: S.study_id, rater: state.rater,
      exported: new Date().toISOString(),
      votes: S.pairs.filter(function (p) { return state.votes[p.id]; }).map(function (p) {
        return {pair: p.id, answer: state.votes[p.id].answer, time: state.votes[p.id].time};
      })
    }, null, 1);
  }
  function download() {
    var blob = new Blob([exportVotes()], {type: "application/json"});
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "votes-" + S.study_id + "-" + (state.rater || "anonymous").replace(/[^A-Za-z0-9_-]/g, "_") + ".json";
    document.body.appendChild(a); a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }
  ANSWERS.forEach(function (a) {
    document.getElementById("btn-" + a).addEventListener("click", function () { answer(a); });
  });
  document.getElementById("prev").addEventListener("click", function () { go(-1); });
  document.getElementById("next").addEventListener("click", function () { go(1); });
  document.getElementById("export").addEventListener("click", download);
  var rater = document.getElementById("rater");
  rater.value = state.rater;
  rater.addEventListener("input", function () { state.rater = rater.value.trim(); save(); });
  document.addEventListener("keydown", function (e) {
    if (e.target === rater || e.altKey || e.ctrlKey || e.metaKey) { return; }
    var k = ["1", "2", "3", "4"].indexOf(e.key);
    if (k >= 0) { answer(ANSWERS[k]); e.preventDefault(); }
    else if (e.key === "ArrowLeft") { go(-1); e.preventDefault(); }
    else if (e.key === "ArrowRight") { go(1); e.preventDefault(); }
  });
  window.midreStudy = {exportVotes: exportVotes, pairs: S.pairs.length,
                       position: function () { return state.pos; }};
  show();
})();
</script>
</body></html>
"""
