"""The reference shopper web app: static files (``index.html``, ``app.js``, ``mqtt.js``,
``app.css``, ``vendor/qrcode.js``) that connect to the store broker by MQTT over
WebSockets. Any web server can serve them; :mod:`proximity.webapp.server` is the small
one behind ``proximity app --web``. docs/webapp.md says how to run it against a store."""
