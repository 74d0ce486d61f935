// The reference shopper web app: one shopper's offers from the store broker, by MQTT over
// WebSockets, shown in their call-to-action format, with the coupon as a QR code for the
// till, and feedback (delivered / opened / clicked / dismissed) sent back as the contract says
// (docs/webapp.md; proximity/delivery/app_client.py is the same contract in Python).
//
// The offers on the page, and the ids already seen, are kept in the browser's localStorage
// until they expire, so a reload (or the phone's browser dropping the tab) keeps the coupon.
//
// Settings come from the page's query (?broker=ws://host:9001&store=store-001&token=…&password=…)
// or from the form. The password is then taken out of the address bar and kept for the tab only.
"use strict";

(function () {
  const MOMENTS = { know: "Know", go: "Go", do: "Do", buy: "Buy" };
  const FORMATS = ["banner", "button", "landing", "push", "sms"];
  const SEGMENT = /^[A-Za-z0-9_.\-]{1,64}$/;
  const REMEMBERED_IDS = 1024; // recent offer ids kept to drop redelivered duplicates
  const TOAST_MS = 8000;

  const $ = (selector) => document.querySelector(selector);
  const app = {
    client: null,
    settings: null,
    offers: new Map(), // offer id -> {offer, element, toast, expires}
    seen: [],
    seenSet: new Set(),
    rejected: {}, // reason -> count: payloads that were not an offer
    duplicates: 0,
    expiredOnArrival: 0,
    sent: [], // feedback published: {offer, action}
    shownAt: {}, // offer id -> Date.now() when it was put on the page
    feedbackFailed: 0,
  };
  window.proximityApp = app; // for a developer's console and the browser tests

  // --- settings ------------------------------------------------------------------------

  function readSettings() {
    const query = new URLSearchParams(location.search);
    const settings = {
      broker: query.get("broker") || "",
      store: query.get("store") || "store-001",
      token: query.get("token") || "",
      password: query.get("password") || sessionStorage.getItem("proximity.password") || "",
    };
    if (query.has("password")) {
      sessionStorage.setItem("proximity.password", settings.password);
      query.delete("password");
      history.replaceState(null, "", location.pathname + "?" + query.toString());
    }
    return settings;
  }

  function problem(settings) {
    if (!/^wss?:\/\/./.test(settings.broker)) return "the broker must be a ws:// or wss:// URL";
    if (!SEGMENT.test(settings.store)) return "the store id may only have letters, digits, _ . -";
    if (!SEGMENT.test(settings.token)) return "the shopper token may only have letters, digits, _ . -";
    return null;
  }

  function clientId() {
    // one id per tab: a reload resumes the same persistent session, two tabs do not fight
    let id = sessionStorage.getItem("proximity.clientId");
    if (!id) {
      const bytes = crypto.getRandomValues(new Uint8Array(6));
      id = "app-web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
      sessionStorage.setItem("proximity.clientId", id);
    }
    return id;
  }

  function showForm(settings, message) {
    const form = $("#connect");
    for (const name of ["broker", "store", "token", "password"]) {
      if (settings[name]) form.elements[name].value = settings[name];
    }
    form.hidden = false;
    setStatus("offline", message || "Not connected");
    form.onsubmit = (event) => {
      event.preventDefault();
      const chosen = {
        broker: form.elements.broker.value.trim(),
        store: form.elements.store.value.trim(),
        token: form.elements.token.value.trim(),
        password: form.elements.password.value,
      };
      const wrong = problem(chosen);
      if (wrong) {
        setStatus("offline", "Check the settings: " + wrong);
        return;
      }
      sessionStorage.setItem("proximity.password", chosen.password);
      const query = new URLSearchParams({ broker: chosen.broker, store: chosen.store, token: chosen.token });
      history.replaceState(null, "", location.pathname + "?" + query.toString());
      form.hidden = true;
      connect(chosen);
    };
  }

  // --- the connection ----------------------------------------------------------------------

  function topics(settings) {
    const base = `proximity/v1/${settings.store}/shoppers/${settings.token}`;
    return { offers: base + "/offers", feedback: base + "/feedback" };
  }

  function setStatus(state, text) {
    const status = $("#status");
    status.dataset.state = state;
    status.textContent = text;
  }

  function connect(settings) {
    if (app.client) app.client.close();
    app.settings = settings;
    app.topics = topics(settings);
    const client = new ProximityMqtt.Client({
      url: settings.broker,
      clientId: clientId(),
      username: settings.token,
      password: settings.password,
    });
    client.onstatechange = (state, detail) => {
      const text = {
        connecting: "Connecting…",
        connected: `Connected to ${settings.store}`,
        offline: "Offline: trying again",
        refused: `Refused: ${detail}`,
      }[state];
      setStatus(state, text || state);
    };
    client.onmessage = (topic, payload) => {
      if (topic === app.topics.offers) received(payload);
    };
    client.subscribe(app.topics.offers, 1);
    app.client = client;
    restore();
  }

  // --- kept across reloads -----------------------------------------------------------------

  function storageKey() {
    return `proximity.offers.${app.settings.store}.${app.settings.token}`;
  }

  function save() {
    const kept = [];
    for (const entry of app.offers.values()) kept.push({ offer: entry.offer, opened: entry.opened });
    try {
      localStorage.setItem(storageKey(), JSON.stringify({ offers: kept, seen: app.seen }));
    } catch (error) {
      // private browsing or a full quota: the page still works, a reload forgets
    }
  }

  function restore() {
    let kept;
    try {
      kept = JSON.parse(localStorage.getItem(storageKey()) || "null");
    } catch (error) {
      kept = null;
    }
    if (!kept || !Array.isArray(kept.offers) || !Array.isArray(kept.seen)) return;
    for (const id of kept.seen.slice(-REMEMBERED_IDS)) remember(String(id));
    for (const { offer, opened } of kept.offers) {
      if (validOffer(offer) || app.offers.has(offer.id)) continue;
      const expires = Date.parse(offer.expires_at);
      if (expires > Date.now()) show(offer, expires, { restored: true, opened: Boolean(opened) });
    }
    save();
  }

  function remember(id) {
    if (app.seenSet.has(id)) return;
    app.seen.push(id);
    app.seenSet.add(id);
    if (app.seen.length > REMEMBERED_IDS) app.seenSet.delete(app.seen.shift());
  }

  function reject(reason) {
    app.rejected[reason] = (app.rejected[reason] || 0) + 1;
    if (app.rejected[reason] === 1) console.warn("offer rejected:", reason);
  }

  // The offer's JSON (proximity/offers.py), checked as far as this page relies on it.
  function validOffer(data) {
    if (typeof data !== "object" || data === null || Array.isArray(data)) return "not_an_object";
    if (typeof data.id !== "string" || !data.id) return "missing_id";
    if (typeof data.rule !== "string") return "missing_rule";
    if (!(data.moment in MOMENTS)) return "bad_moment";
    const cta = data.cta;
    if (typeof cta !== "object" || cta === null) return "missing_cta";
    if (!FORMATS.includes(cta.format)) return "bad_cta_format";
    if (typeof cta.title !== "string" || !cta.title) return "missing_title";
    for (const key of ["text", "link", "image"]) {
      if (cta[key] != null && typeof cta[key] !== "string") return "bad_cta_" + key;
    }
    for (const key of ["coupon", "redeem_code"]) {
      if (data[key] != null && typeof data[key] !== "string") return "bad_" + key;
    }
    const issued = Date.parse(data.issued_at);
    const expires = Date.parse(data.expires_at);
    if (Number.isNaN(issued) || Number.isNaN(expires)) return "bad_time";
    if (expires <= issued) return "expires_before_issue";
    return null;
  }

  function received(payload) {
    let data;
    try {
      data = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(payload));
    } catch (error) {
      reject("not_json");
      return;
    }
    const wrong = validOffer(data);
    if (wrong) {
      reject(wrong);
      return;
    }
    if (app.seenSet.has(data.id)) {
      app.duplicates += 1; // delivery is at least once: the same offer can come twice
      return;
    }
    remember(data.id);
    const expires = Date.parse(data.expires_at);
    if (expires <= Date.now()) {
      app.expiredOnArrival += 1;
      return;
    }
    show(data, expires);
    app.shownAt[data.id] = Date.now();
    save();
    feedback(data.id, "delivered");
  }

  function feedback(offerId, action) {
    const payload = JSON.stringify({ offer: offerId, action, at: new Date().toISOString() });
    app.sent.push({ offer: offerId, action });
    return app.client.publish(app.topics.feedback, payload, 1).catch((error) => {
      app.feedbackFailed += 1;
      console.warn("feedback not acknowledged:", error.message);
    });
  }

  // --- showing an offer ----------------------------------------------------------------------

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  // The coupon's redeem code as a QR code: at least 4 px a module (8 at most), a 4-module quiet zone.
  function qrCanvas(text) {
    const qr = qrcode(0, "M");
    qr.addData(text);
    qr.make();
    const modules = qr.getModuleCount();
    const quiet = 4;
    const cell = Math.max(4, Math.min(8, Math.floor(300 / (modules + 2 * quiet))));
    const size = (modules + 2 * quiet) * cell;
    const canvas = el("canvas", { class: "coupon__qr", role: "img", width: size, height: size });
    canvas.style.width = canvas.style.height = size + "px";
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, size, size);
    ctx.fillStyle = "#000";
    for (let row = 0; row < modules; row++) {
      for (let col = 0; col < modules; col++) {
        if (qr.isDark(row, col)) ctx.fillRect((col + quiet) * cell, (row + quiet) * cell, cell, cell);
      }
    }
    canvas.dataset.moduleSize = String(cell);
    return canvas;
  }

  function linkFor(offer) {
    const link = offer.cta.link;
    // a URL or an app deep link (shop://aisle/7); never script or local content
    if (!link || /^\s*(javascript|data|vbscript|file|blob):/i.test(link)) return null;
    const label = { know: "Read more", go: "Show me the way", do: "Let's go", buy: "Get the offer" }[offer.moment];
    const anchor = el("a", { class: "offer__cta", href: link, rel: "noopener", target: "_blank", text: label });
    anchor.addEventListener("click", (event) => {
      // report the click first: the link may take the shopper off this page
      event.preventDefault();
      const done = feedback(offer.id, "clicked");
      const timeout = new Promise((resolve) => setTimeout(resolve, 1500));
      Promise.race([done, timeout]).then(() => window.open(link, "_blank", "noopener"));
    });
    return anchor;
  }

  // `restored`: an offer kept from before a reload (already delivered: no toast, no feedback)
  function show(offer, expires, { restored = false, opened = false } = {}) {
    const format = offer.cta.format;
    const detailId = "detail-" + offer.id;
    const open = el(
      "button",
      { class: "offer__open", type: "button", "aria-expanded": "false", "aria-controls": detailId },
      el("span", { class: "offer__moment", text: MOMENTS[offer.moment] }),
      el("span", { class: "offer__title", text: offer.cta.title }),
    );
    // a banner, a push and a text message say their text at once; a button and a landing
    // card keep it for when the shopper opens them
    const text = offer.cta.text ? el("p", { class: "offer__text", text: offer.cta.text }) : null;
    const textFirst = ["banner", "push", "sms"].includes(format);
    const detail = el(
      "div",
      { class: "offer__detail", id: detailId, hidden: true },
      textFirst ? null : text,
      /^https?:\/\//.test(offer.cta.image || "") ? el("img", { class: "offer__image", src: offer.cta.image, alt: "", loading: "lazy" }) : null,
      linkFor(offer),
    );
    const coupon = offer.redeem_code
      ? el(
          "figure",
          { class: "coupon" },
          qrCanvas(offer.redeem_code),
          el("figcaption", { text: (offer.coupon ? offer.coupon + ": " : "") + "show this code at the till" }),
        )
      : null;
    if (coupon) coupon.firstChild.setAttribute("aria-label", `Coupon ${offer.coupon || ""} QR code for the till`);
    const countdown = el("p", { class: "offer__countdown" });
    const dismiss = el("button", { class: "offer__dismiss", type: "button", "aria-label": "Dismiss: " + offer.cta.title, text: "Dismiss" });
    const sender = format === "sms" ? el("p", { class: "offer__sender", text: `Text from ${offer.store}` }) : null;
    const item = el(
      "li",
      { class: `offer offer--${format}`, "data-offer-id": offer.id, "data-format": format, "data-moment": offer.moment },
      el("article", { "aria-label": offer.cta.title }, sender, open, textFirst ? text : null, coupon, detail, el("div", { class: "offer__foot" }, countdown, dismiss)),
    );
    open.addEventListener("click", () => {
      const expanded = open.getAttribute("aria-expanded") !== "true";
      open.setAttribute("aria-expanded", String(expanded));
      detail.hidden = !expanded;
      item.classList.toggle("offer--open", expanded);
      if (expanded && !entry.opened) {
        entry.opened = true;
        save();
        feedback(offer.id, "opened");
      }
    });
    dismiss.addEventListener("click", () => {
      feedback(offer.id, "dismissed");
      remove(offer.id);
    });
    const list = $("#offers");
    if (format === "banner") list.prepend(item);
    else list.append(item);
    const entry = { offer, element: item, toast: null, expires, countdown, opened };
    if (format === "push" && !restored) entry.toast = toast(offer, open);
    app.offers.set(offer.id, entry);
    $("#empty").hidden = true;
    if (!restored) announce(`New offer: ${offer.cta.title}`);
    tick();
  }

  function toast(offer, open) {
    const button = el(
      "button",
      { class: "toast", type: "button", "data-offer-id": offer.id },
      el("strong", { text: offer.cta.title }),
      offer.cta.text ? el("span", { text: offer.cta.text }) : null,
    );
    button.addEventListener("click", () => {
      button.remove();
      if (open.getAttribute("aria-expanded") !== "true") open.click();
      open.focus();
    });
    $("#toasts").append(button);
    setTimeout(() => button.remove(), TOAST_MS);
    return button;
  }

  function announce(text) {
    $("#announce").textContent = text; // a polite live region: screen readers say it once
  }

  function remove(offerId) {
    const entry = app.offers.get(offerId);
    if (!entry) return;
    entry.element.remove();
    if (entry.toast) entry.toast.remove();
    app.offers.delete(offerId);
    $("#empty").hidden = app.offers.size > 0;
    save();
  }

  function left(ms) {
    const total = Math.max(0, Math.ceil(ms / 1000));
    const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
    const mm = String(m).padStart(h ? 2 : 1, "0"), ss = String(s).padStart(2, "0");
    return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
  }

  // Once a second (and on each new offer): the countdowns, and expired offers taken away.
  function tick() {
    const now = Date.now();
    for (const [id, entry] of app.offers) {
      const ms = entry.expires - now;
      if (ms <= 0) remove(id);
      else entry.countdown.textContent = "Expires in " + left(ms);
    }
  }

  // --- start -------------------------------------------------------------------------------

  setInterval(tick, 1000);
  const settings = readSettings();
  const wrong = problem(settings);
  if (wrong) showForm(settings, settings.broker || settings.token ? "Check the settings: " + wrong : null);
  else connect(settings);
})();
