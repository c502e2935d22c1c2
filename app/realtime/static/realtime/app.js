(function () {
  "use strict";

  function showState(name, state) {
    var el = document.querySelector('[data-state-for="' + name + '"]');
    if (el) { el.textContent = state; el.dataset.state = state.split(" ")[0]; }
  }

  function toast(text) {
    var box = document.createElement("div");
    box.className = "notification-toast";
    box.textContent = text;
    document.getElementById("toasts").appendChild(box);
    setTimeout(function () { box.remove(); }, 6000);
  }

  function csrfToken() {
    var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  // Live prices: one row per symbol, updated from each batch.
  new LiveSocket("/ws/live/", {
    onState: function (s) { showState("live", s); },
    onMessage: function (data) {
      if (data.type !== "batch") { return; }
      var body = document.getElementById("prices");
      data.updates.forEach(function (u) {
        var row = document.getElementById("sym-" + u.symbol);
        if (!row) {
          row = document.createElement("tr");
          row.id = "sym-" + u.symbol;
          row.innerHTML = "<td></td><td></td><td></td>";
          body.appendChild(row);
        }
        row.cells[0].textContent = u.symbol;
        row.cells[1].textContent = u.price.toFixed(2);
        row.cells[2].textContent = new Date(u.ts).toLocaleTimeString();
      });
    }
  });

  if (!document.getElementById("whoami")) { return; }

  new LiveSocket("/ws/notifications/", {
    onState: function (s) { showState("notifications", s); },
    onMessage: function (data) {
      if (data.type !== "notification") { return; }
      toast(data.message);
      var item = document.createElement("li");
      item.textContent = new Date(data.timestamp).toLocaleTimeString() + " " + data.message;
      document.getElementById("notification-log").prepend(item);
    }
  });

  var lastOrder = null;
  var orders = new LiveSocket("/ws/orders/", {
    onState: function (s) { showState("orders", s); },
    // Resubscribe: ask again for the order on screen after every reconnect.
    onOpen: function (sock) { if (lastOrder) { sock.send({ order_id: lastOrder }); } },
    onMessage: function (data) {
      document.getElementById("order-result").textContent = JSON.stringify(data, null, 2);
    }
  });
  document.getElementById("order-form").addEventListener("submit", function (e) {
    e.preventDefault();
    lastOrder = parseInt(e.target.order_id.value, 10);
    orders.send({ order_id: lastOrder });
  });

  var notifyForm = document.getElementById("notify-form");
  if (notifyForm) {
    notifyForm.addEventListener("submit", function (e) {
      e.preventDefault();
      fetch("/api/notifications/", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
        body: JSON.stringify({ user_id: parseInt(e.target.user_id.value, 10), message: e.target.message.value })
      }).then(function (r) { if (r.status !== 202) { toast("not sent: HTTP " + r.status); } });
    });
  }
})();
