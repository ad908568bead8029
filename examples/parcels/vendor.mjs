// A vendor: announces parcels ready for pickup on the shared `parcels.ready` stream, and reports
// every status update of its own parcels from `parcels.status.<vendor>`, including the ones
// that happened while it was not running.
//
//   node vendor.mjs <vendor> [--announce N]
//
// The hub keeps the vendor's position in its status stream (the durable consumer "desk"): an
// update is acknowledged once it has been printed, and anything not acknowledged, because the
// vendor was offline or stopped first, is delivered when it comes back.

import { parseArgs } from "node:util";
import { checkName, connect, keepSubscribed, log, onShutdown, publish } from "./common.mjs";

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: { announce: { type: "string", default: "0" } },
});
const vendor = checkName(positionals[0], "vendor");
const toAnnounce = Number(values.announce);
if (!Number.isInteger(toAnnounce) || toAnnounce < 0) {
  console.error(`--announce takes a number of parcels (got ${values.announce})`);
  process.exit(2);
}

const ADDRESSES = [
  "12 Rue des Lilas",
  "4 Harbour Lane",
  "77 Kastanienallee",
  "9 Via Roma",
  "31 Elm Street",
  "5 Quai de la Gare",
];

const startedAt = Date.now();
const statusStream = `parcels.status.${vendor}`;
const socket = connect(vendor, "vendor");
const printed = new Set(); // updates printed by this run (the hub delivers at least once)
let announcing = null;

socket.on("parcel.status", (update, meta, ack) => {
  const key = meta?.id ?? `${update.parcel}:${update.status}:${update.driver}`;
  if (!printed.has(key)) {
    printed.add(key);
    const when = new Date(update.at).toLocaleTimeString("en-GB");
    const away = Date.parse(update.at) < startedAt ? " (while this vendor was offline)" : "";
    if (update.status === "delivered") {
      log(vendor, `DELIVERED ${update.parcel} by ${update.driver} at ${when}${away}`);
    } else {
      log(vendor, `${update.parcel} is ${update.status.replace("-", " ")} with ${update.driver} since ${when}${away}`);
    }
  }
  ack(); // printed: the hub may forget it for this vendor
});

keepSubscribed(
  socket,
  vendor,
  // "all": a brand-new vendor also gets what was reported before it ever subscribed
  { stream: statusStream, consumer: "desk", from: "all" },
  async ({ pending }) => {
    log(vendor, `subscribed to ${statusStream}; ${pending} updates were waiting`);
    announcing ??= announce(toAnnounce);
  },
);

async function announce(count) {
  const batch = Date.now().toString(36);
  for (let i = 1; i <= count; i++) {
    const parcel = `${vendor}-${batch}-${i}`;
    const to = ADDRESSES[Math.floor(Math.random() * ADDRESSES.length)];
    // The parcel id is the message id: announcing again after a lost answer is harmless.
    const { seq } = await publish(socket, "parcels.ready", "parcel.ready", { parcel, vendor, to }, parcel);
    log(vendor, `announced ${parcel} for pickup, to ${to} (seq ${seq})`);
  }
  if (count > 0) log(vendor, `${count} parcels announced; waiting for drivers`);
}

onShutdown(() => {
  log(vendor, "closing; status updates from now on wait for the next start");
  socket.disconnect();
});
