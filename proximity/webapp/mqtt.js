// A small MQTT 3.1.1 client over WebSockets (subprotocol "mqtt"), for the shopper web app.
//
// Enough of the protocol for an app that reads its offers and writes its feedback:
// CONNECT with username and password, SUBSCRIBE, PUBLISH at QoS 0 and 1 in both directions
// (PUBACK sent for what arrives at QoS 1, awaited for what we send), PINGREQ keepalive,
// and reconnecting with a growing delay. A session is persistent (clean session off) under
// a client id kept for the tab, so QoS 1 messages sent while the phone was out of reach are
// delivered when it is back; QoS 1 publishes not yet acknowledged are sent again (DUP) on
// reconnect, as MQTT 3.1.1 asks. No QoS 2, no will, no retained publishing.
//
//   const client = new ProximityMqtt.Client({url, clientId, username, password});
//   client.onmessage = (topic, payloadBytes, packet) => {...};
//   client.onstatechange = (state, detail) => {...};   // "connecting" | "connected" | "offline" | "refused"
//                                                      // ("connected": CONNACK and every SUBACK in)
//   client.subscribe("a/b", 1);                          // kept and renewed on every reconnect
//   await client.publish("a/c", "text", 1);             // resolves on PUBACK
//   client.close();
"use strict";

(function (global) {
  const CONNECT = 1, CONNACK = 2, PUBLISH = 3, PUBACK = 4, SUBSCRIBE = 8, SUBACK = 9;
  const PINGREQ = 12, PINGRESP = 13, DISCONNECT = 14;
  const CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
  };
  const encoder = new TextEncoder();
  const decoder = new TextDecoder("utf-8", { fatal: true });

  function utf8String(text) {
    const bytes = encoder.encode(text);
    if (bytes.length > 0xffff) throw new Error("MQTT string longer than 65535 bytes");
    const out = new Uint8Array(2 + bytes.length);
    out[0] = bytes.length >> 8;
    out[1] = bytes.length & 0xff;
    out.set(bytes, 2);
    return out;
  }

  function u16(value) {
    return new Uint8Array([value >> 8, value & 0xff]);
  }

  function concat(parts) {
    let size = 0;
    for (const part of parts) size += part.length;
    const out = new Uint8Array(size);
    let at = 0;
    for (const part of parts) {
      out.set(part, at);
      at += part.length;
    }
    return out;
  }

  // One control packet: the fixed header (type, flags, remaining length) and the body.
  function packet(type, flags, parts) {
    const body = concat(parts);
    const length = [];
    let rest = body.length;
    do {
      let digit = rest % 128;
      rest = Math.floor(rest / 128);
      if (rest > 0) digit |= 0x80;
      length.push(digit);
    } while (rest > 0);
    return concat([new Uint8Array([(type << 4) | flags]), new Uint8Array(length), body]);
  }

  // Splits a byte stream into packets: a WebSocket frame may hold several, or part of one.
  class PacketReader {
    constructor() {
      this.buffer = new Uint8Array(0);
    }

    push(bytes) {
      this.buffer = this.buffer.length ? concat([this.buffer, bytes]) : bytes;
      const packets = [];
      for (;;) {
        const buf = this.buffer;
        if (buf.length < 2) break;
        let length = 0, multiplier = 1, at = 1, complete = false;
        while (at < buf.length && at <= 4) {
          const digit = buf[at++];
          length += (digit & 0x7f) * multiplier;
          multiplier *= 128;
          if ((digit & 0x80) === 0) {
            complete = true;
            break;
          }
        }
        if (!complete) {
          if (at > 4) throw new Error("malformed remaining length");
          break;
        }
        if (buf.length < at + length) break;
        packets.push({ type: buf[0] >> 4, flags: buf[0] & 0x0f, body: buf.subarray(at, at + length) });
        this.buffer = buf.subarray(at + length);
      }
      return packets;
    }
  }

  class Client {
    constructor({ url, clientId, username, password, keepalive = 30, timeout = 10 }) {
      this.url = url;
      this.clientId = clientId;
      this.username = username;
      this.password = password;
      this.keepalive = keepalive;
      this.timeout = timeout;
      this.state = "offline";
      this.onmessage = () => {};
      this.onstatechange = () => {};
      this.subscriptions = new Map(); // topic filter -> QoS
      this.inflight = new Map(); // packet id -> {bytes, resolve, reject, timer}
      this.nextId = 1;
      this.retryDelay = 1000;
      this.closed = false;
      this.socket = null;
      this.pendingSubacks = new Set();
      this.open();
    }

    open() {
      if (this.closed) return;
      this.setState("connecting");
      let socket;
      try {
        socket = new WebSocket(this.url, "mqtt");
      } catch (error) {
        this.setState("offline", String(error));
        this.retry();
        return;
      }
      this.socket = socket;
      this.reader = new PacketReader();
      socket.binaryType = "arraybuffer";
      socket.onopen = () => {
        const flags = 0x00 | (this.username ? 0x80 : 0) | (this.password ? 0x40 : 0);
        const parts = [utf8String("MQTT"), new Uint8Array([4, flags]), u16(this.keepalive)];
        parts.push(utf8String(this.clientId));
        if (this.username) parts.push(utf8String(this.username));
        if (this.password) parts.push(utf8String(this.password));
        this.send(packet(CONNECT, 0, parts));
      };
      socket.onmessage = (event) => {
        let packets;
        try {
          packets = this.reader.push(new Uint8Array(event.data));
        } catch (error) {
          socket.close();
          return;
        }
        for (const p of packets) this.handle(p);
      };
      socket.onclose = () => {
        if (this.socket !== socket) return;
        this.socket = null;
        clearInterval(this.pinger);
        if (this.state !== "refused") this.setState("offline");
        this.retry();
      };
      socket.onerror = () => {}; // onclose follows and says the rest
    }

    retry() {
      if (this.closed) return;
      const delay = this.retryDelay;
      this.retryDelay = Math.min(this.retryDelay * 2, 30000);
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => this.open(), delay);
    }

    setState(state, detail) {
      this.state = state;
      this.onstatechange(state, detail);
    }

    send(bytes) {
      if (this.socket && this.socket.readyState === WebSocket.OPEN) {
        this.socket.send(bytes);
        this.lastSent = Date.now();
        return true;
      }
      return false;
    }

    handle(p) {
      switch (p.type) {
        case CONNACK: {
          const code = p.body[1];
          if (code !== 0) {
            // a refused password will not get better by itself: wait longer between tries
            this.retryDelay = 30000;
            this.setState("refused", CONNACK_REASONS[code] || `refused (${code})`);
            this.socket.close();
            return;
          }
          this.retryDelay = 1000;
          this.startPinging();
          this.pendingSubacks = new Set();
          for (const [topic, qos] of this.subscriptions) this.sendSubscribe(topic, qos);
          for (const [id, entry] of this.inflight) {
            entry.bytes[0] |= 0x08; // DUP: a retransmission
            this.send(entry.bytes);
            this.armTimer(id);
          }
          // "connected" once every subscription is in place: nothing sent after it is missed
          if (this.pendingSubacks.size === 0) this.setState("connected");
          return;
        }
        case PUBLISH: {
          const qos = (p.flags >> 1) & 0x03;
          const topicLength = (p.body[0] << 8) | p.body[1];
          let at = 2 + topicLength;
          let topic;
          try {
            topic = decoder.decode(p.body.subarray(2, at));
          } catch (error) {
            this.socket.close(); // a topic that is not UTF-8 is a protocol violation
            return;
          }
          let id = null;
          if (qos > 0) {
            id = (p.body[at] << 8) | p.body[at + 1];
            at += 2;
          }
          const payload = p.body.slice(at);
          if (qos === 1) this.send(packet(PUBACK, 0, [u16(id)]));
          try {
            this.onmessage(topic, payload, { qos, retain: (p.flags & 1) === 1, dup: (p.flags & 8) === 8 });
          } catch (error) {
            console.error("onmessage failed", error);
          }
          return;
        }
        case PUBACK: {
          const id = (p.body[0] << 8) | p.body[1];
          const entry = this.inflight.get(id);
          if (entry) {
            clearTimeout(entry.timer);
            this.inflight.delete(id);
            entry.resolve();
          }
          return;
        }
        case SUBACK: {
          const id = (p.body[0] << 8) | p.body[1];
          if (p.body.subarray(2).some((code) => code === 0x80)) {
            this.setState("refused", "subscription refused by the broker (ACL)");
          } else if (this.pendingSubacks.delete(id) && this.pendingSubacks.size === 0) {
            this.setState("connected");
          }
          return;
        }
        case PINGRESP:
          this.pongDue = null;
          return;
        default:
          return;
      }
    }

    startPinging() {
      clearInterval(this.pinger);
      this.pongDue = null;
      this.pinger = setInterval(() => {
        const now = Date.now();
        if (this.pongDue && now > this.pongDue) {
          if (this.socket) this.socket.close(); // the broker stopped answering
          return;
        }
        if (now - (this.lastSent || 0) >= (this.keepalive * 1000) / 2) {
          this.send(packet(PINGREQ, 0, []));
          this.pongDue = this.pongDue || now + this.keepalive * 1000;
        }
      }, Math.max(1000, (this.keepalive * 1000) / 4));
    }

    packetId() {
      for (;;) {
        const id = this.nextId;
        this.nextId = this.nextId === 0xffff ? 1 : this.nextId + 1;
        if (!this.inflight.has(id)) return id;
      }
    }

    sendSubscribe(topic, qos) {
      const id = this.packetId();
      this.pendingSubacks.add(id);
      this.send(packet(SUBSCRIBE, 0x02, [u16(id), utf8String(topic), new Uint8Array([qos])]));
    }

    subscribe(topic, qos = 1) {
      this.subscriptions.set(topic, qos);
      if (this.state === "connected") this.sendSubscribe(topic, qos);
    }

    // QoS 0 resolves once written; QoS 1 on the broker's PUBACK. A QoS 1 message waits
    // through a disconnect and is sent again on reconnect; it rejects after `timeout`
    // seconds without a PUBACK while connected (and is then dropped).
    publish(topic, text, qos = 1) {
      const payload = typeof text === "string" ? encoder.encode(text) : text;
      if (qos === 0) {
        return this.send(packet(PUBLISH, 0, [utf8String(topic), payload]))
          ? Promise.resolve()
          : Promise.reject(new Error("not connected"));
      }
      const id = this.packetId();
      const bytes = packet(PUBLISH, 0x02, [utf8String(topic), u16(id), payload]);
      return new Promise((resolve, reject) => {
        this.inflight.set(id, { bytes, resolve, reject, timer: null });
        if (this.send(bytes)) this.armTimer(id);
      });
    }

    armTimer(id) {
      const entry = this.inflight.get(id);
      if (!entry) return;
      clearTimeout(entry.timer);
      entry.timer = setTimeout(() => {
        if (this.state !== "connected") return; // resent on reconnect instead
        this.inflight.delete(id);
        entry.reject(new Error("no PUBACK within " + this.timeout + " s"));
      }, this.timeout * 1000);
    }

    close() {
      this.closed = true;
      clearTimeout(this.retryTimer);
      clearInterval(this.pinger);
      if (this.socket) {
        this.send(packet(DISCONNECT, 0, []));
        this.socket.close();
      }
      this.setState("offline");
    }
  }

  global.ProximityMqtt = { Client, PacketReader };
})(window);
