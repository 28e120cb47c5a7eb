// Tellestrek tick page: small conveniences on top of a form that works without JavaScript.
// - The usual answers are remembered on this device only (localStorage) and preselected.
// - A tick is sent to POST /api/v1/ticks with the form's key. Made offline, or while the
//   server is unreachable or cannot store it, it is queued on this device and sent later with
//   its period and its Idempotency-Key, so it is counted once in the period it was made; a
//   tick that arrives too late is discarded with a message.
// Nothing here is sent anywhere but the page's own server.
(function () {
  "use strict";
  var form = document.getElementById("tick-form");
  if (!form) { return; }
  var USUAL = "tellestrek.usual";
  var QUEUE = "tellestrek.queue";
  var status = document.getElementById("tick-status");
  var csrf = form.elements.namedItem("csrf").value;

  function say(text) { if (status) { status.textContent = text; } }
  function load(key, fallback) {
    try { var v = JSON.parse(localStorage.getItem(key)); return v === null ? fallback : v; }
    catch (e) { return fallback; }
  }
  function save(key, value) {
    try { localStorage.setItem(key, JSON.stringify(value)); } catch (e) { /* private mode */ }
  }
  function groups() {
    var names = [];
    Array.prototype.forEach.call(form.querySelectorAll("input[type=radio]"), function (r) {
      if (names.indexOf(r.name) < 0) { names.push(r.name); }
    });
    return names;
  }
  function chosen() {
    var out = {};
    groups().forEach(function (name) {
      var c = form.querySelector("input[name='" + name + "']:checked");
      if (c) { out[name] = c.value; }
    });
    return out;
  }

  // Preselect the usual answers where the server selected nothing or only a preset (the
  // policy's default answer or the unit given at invite): this device's own answers win.
  var usual = load(USUAL, {});
  var preselected = false;
  groups().forEach(function (name) {
    var server = form.querySelector("input[name='" + name + "']:checked");
    if (server && !server.hasAttribute("data-preset")) { return; }
    var v = usual[name];
    if (!v) { return; }
    var r = form.querySelector("input[name='" + name + "'][value='" + CSS.escape(v) + "']");
    if (r) { r.checked = true; preselected = true; }
  });
  if (preselected) { say(form.dataset.msgUsual); }

  function body(answers) {
    var tags = {};
    Object.keys(answers).forEach(function (k) {
      if (k.indexOf("dim.") === 0) { tags[k.slice(4)] = answers[k]; }
    });
    return { org: form.dataset.org, unit: answers.unit, tags: tags, period: form.dataset.period };
  }
  function send(item) {
    return fetch("/api/v1/ticks", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Idempotency-Key": item.key, "X-CSRF-Token": csrf },
      body: JSON.stringify(item.body)
    });
  }

  var flushing = false;
  function flush() {
    var queue = load(QUEUE, []);
    if (flushing || queue.length === 0 || navigator.onLine === false) { return; }
    flushing = true;
    var item = queue[0];
    send(item).then(function (res) {
      if (res.status >= 500) { throw new Error("server"); }
      var rest = load(QUEUE, []).filter(function (q) { return q.key !== item.key; });
      save(QUEUE, rest);
      if (res.ok) { say(form.dataset.msgSent); }
      else if (res.status !== 401) { say(form.dataset.msgTooLate); }
      flushing = false;
      if (rest.length) { flush(); }
    }).catch(function () { flushing = false; });
  }

  function queueTick(answers) {
    var queue = load(QUEUE, []);
    queue.push({ key: form.elements.namedItem("key").value, body: body(answers) });
    save(QUEUE, queue);
    say(form.dataset.msgQueued);
    // A fresh key for the next contact made on this page.
    form.elements.namedItem("key").value = "q-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
  }

  var sending = false;
  form.addEventListener("submit", function (ev) {
    var answers = chosen();
    save(USUAL, answers);
    ev.preventDefault();
    if (sending) { return; }
    if (navigator.onLine === false) { queueTick(answers); return; }
    // Sent to the API with the form's key: if the server cannot be reached (or cannot store
    // it now), the tick is queued on this device instead of lost.
    sending = true;
    var item = { key: form.elements.namedItem("key").value, body: body(answers) };
    send(item).then(function (res) {
      sending = false;
      if (res.status === 201) {
        // No answers in the URL: the device keeps them (a URL would be logged with a time).
        window.location.assign("/tick/done");
      } else if (res.status >= 500) {
        queueTick(answers);
      } else {
        // Refused (the cap, a closed period, signed out): the plain form post shows why, in
        // the page's language. Nothing was counted, and the key keeps it counted once.
        form.submit();
      }
    }).catch(function () {
      sending = false;
      queueTick(answers);
    });
  });
  window.addEventListener("online", flush);
  setInterval(flush, 15000);
  flush();
})();
