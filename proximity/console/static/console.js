// Proximity ops console: the live store page (proximity run) and the fleet page
// (proximity hq) follow /console/events (Server-Sent Events). No polling: the browser
// reconnects by itself if the stream breaks.
"use strict";

(function () {
  const stream = document.querySelector("[data-live=stream]");
  if (!stream || !window.EventSource) {
    return; // not the live page
  }
  const feed = document.getElementById("feed");
  const KEEP = 50;

  function shade(n, top) {
    return top ? 0.08 + 0.72 * (n / top) : 0.08;
  }

  // Each update touches the page only where something changed: the browser then has
  // nothing to lay out or repaint for an update that moved no shopper (a browser open
  // on the gateway itself shares its cores with the daemon).
  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  function setZones(zones) {
    let top = 0;
    let total = 0;
    for (const n of Object.values(zones)) {
      top = Math.max(top, n);
      total += n;
    }
    document.querySelectorAll("[data-zone-count]").forEach((el) => {
      setText(el, String(zones[el.dataset.zoneCount] || 0));
    });
    document.querySelectorAll("[data-zone]").forEach((el) => {
      const s = shade(zones[el.dataset.zone] || 0, top).toFixed(2);
      if (el.dataset.shade === s) return;
      el.dataset.shade = s;
      const shape = el.querySelector("polygon, circle");
      if (shape) {
        shape.setAttribute("fill-opacity", s);
      } else {
        el.style.backgroundColor = "rgba(25, 113, 194, " + s + ")";
      }
    });
    const shoppers = document.querySelector("[data-live=shoppers]");
    if (shoppers) setText(shoppers, String(total));
  }

  const scannerState = new Map();

  function setScanners(scanners) {
    for (const [id, alive] of Object.entries(scanners)) {
      const state = alive === null ? "unknown" : alive ? "alive" : "silent";
      if (scannerState.get(id) === state) continue;
      scannerState.set(id, state);
      document.querySelectorAll('[data-scanner="' + CSS.escape(id) + '"]').forEach((el) => {
        el.classList.remove("alive", "silent", "unknown");
        el.classList.add(state);
        if (el.tagName === "TD") el.textContent = state;
        const title = el.querySelector("title");
        if (title) title.textContent = id + ": " + state;
      });
    }
  }

  function item(entry) {
    const li = document.createElement("li");
    li.className = entry.kind === "offer" ? "offer" : "event";
    const time = document.createElement("time");
    time.textContent = String(entry.at || "").slice(11, 19);
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = entry.who || "";
    li.append(time, " ", who, " ");
    if (entry.kind === "offer") {
      const rule = document.createElement("b");
      rule.textContent = entry.rule;
      li.append("offer ", rule, entry.variant ? " (" + entry.variant + ")" : "");
    } else {
      li.append(entry.kind);
    }
    if (entry.zone) li.append(" in " + entry.zone);
    return li;
  }

  function addFeed(entries, replace) {
    if (!feed) return;
    if (replace) feed.replaceChildren();
    for (const entry of entries) feed.prepend(item(entry));
    while (feed.children.length > KEEP) feed.lastElementChild.remove();
  }

  // the chain's fleet: the server renders (and escapes) the table's rows
  function setFleet(fleet) {
    const rows = document.getElementById("fleet-rows");
    if (rows) rows.innerHTML = fleet.rows;
    for (const key of ["stores", "stale"]) {
      const el = document.querySelector("[data-live=" + key + "]");
      if (el) el.textContent = String(fleet[key]);
    }
  }

  function apply(state, replace) {
    if (state.fleet) {
      setFleet(state.fleet);
      return;
    }
    addFeed(state.feed || [], replace);
    setZones(state.zones || {});
    setScanners(state.scanners || {});
    const opm = document.querySelector("[data-live=opm]");
    if (opm) setText(opm, String(state.opm || 0));
  }

  // the boxes of a store without a floor plan: shaded from the server's first render
  document.querySelectorAll("li[data-zone]").forEach((el) => {
    el.style.backgroundColor = "rgba(25, 113, 194, " + (el.dataset.shade || "0.08") + ")";
  });

  const source = new EventSource("/console/events");
  source.addEventListener("open", () => {
    stream.textContent = "live";
    stream.className = "good";
  });
  source.addEventListener("error", () => {
    stream.textContent = "reconnecting…";
    stream.className = "bad";
  });
  source.addEventListener("snapshot", (e) => apply(JSON.parse(e.data), true));
  source.addEventListener("update", (e) => apply(JSON.parse(e.data), false));
  window.addEventListener("pagehide", () => source.close());
})();
