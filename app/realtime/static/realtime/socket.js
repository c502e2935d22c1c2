/*
 * A WebSocket that comes back: reconnects with capped exponential backoff and
 * full jitter (so a thousand clients dropped by one deploy do not return in
 * the same second), re-sends its subscription on every (re)connect, and
 * reports its state for the page to show.
 */
(function (global) {
  "use strict";

  function backoffDelay(attempt, baseMs, capMs, random) {
    var ceiling = Math.min(capMs, baseMs * Math.pow(2, attempt));
    return Math.round(ceiling / 2 + (random || Math.random)() * ceiling / 2);
  }

  // What the page says of the server's own close codes (realtime/closecodes.py).
  var REASONS = {
    4001: "the server is restarting",
    4009: "a message was too big",
    4429: "too many open connections for this account: close another tab or window"
  };

  function LiveSocket(path, options) {
    this.path = path;
    this.options = Object.assign({ baseMs: 500, capMs: 30000, onMessage: function () {},
                                   onState: function () {}, onOpen: function () {} }, options || {});
    this.attempt = 0;
    this.closedByUser = false;
    this.connect();
  }

  LiveSocket.prototype.url = function () {
    var scheme = global.location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + global.location.host + this.path;
  };

  LiveSocket.prototype.connect = function () {
    var self = this;
    self.options.onState("connecting");
    var ws = new WebSocket(self.url());
    self.ws = ws;
    ws.onopen = function () {
      self.attempt = 0;
      self.options.onState("open");
      self.options.onOpen(self);
    };
    ws.onmessage = function (event) {
      var data;
      try { data = JSON.parse(event.data); } catch (e) { return; }
      self.options.onMessage(data, self);
    };
    ws.onclose = function (event) {
      if (self.closedByUser) { self.options.onState("closed"); return; }
      // 4429: too many sockets for this user; waiting at the cap avoids hammering.
      // 4001: the server is going away (a deploy); another instance takes the
      // socket at once, so come back after the first step's jitter only.
      var attempt = event.code === 4429 ? 10 : event.code === 4001 ? 0 : self.attempt++;
      var delay = backoffDelay(attempt, self.options.baseMs, self.options.capMs);
      var reason = REASONS[event.code] ? ": " + REASONS[event.code] : "";
      self.options.onState("reconnecting in " + Math.ceil(delay / 1000) + " s (code " + event.code + reason + ")");
      self.timer = setTimeout(function () { self.connect(); }, delay);
    };
  };

  LiveSocket.prototype.send = function (message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(message));
      return true;
    }
    return false;
  };

  LiveSocket.prototype.close = function () {
    this.closedByUser = true;
    clearTimeout(this.timer);
    if (this.ws) { this.ws.close(1000); }
  };

  global.LiveSocket = LiveSocket;
  global.LiveSocket.backoffDelay = backoffDelay;
})(window);
