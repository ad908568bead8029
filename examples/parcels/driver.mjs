// A driver: takes parcels from the `parcels.ready` work queue it shares with every other driver
// (the durable consumer "drivers": each parcel goes to one of them), reports `in-transit` and
// `delivered` to the vendor's `parcels.status.<vendor>` stream, and acknowledges the parcel only
// once it is delivered. A parcel a driver did not deliver (stopped, crashed, lost the hub) goes
// back to the queue and another driver picks it up.
//
//   node driver.mjs <driver> [--drive-ms 2000]

import { parseArgs } from "node:util";
import { checkName, connect, keepSubscribed, log, onShutdown, publish, sleep } from "./common.mjs";

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: { "drive-ms": { type: "string", default: process.env.DRIVE_MS || "2000" } },
});
const driver = checkName(positionals[0], "driver");
const driveMs = Number(values["drive-ms"]);
if (!Number.isFinite(driveMs) || driveMs < 0) {
  console.error(`--drive-ms takes a number of milliseconds (got ${values["drive-ms"]})`);
  process.exit(2);
}

const socket = connect(driver, "driver");
const van = []; // parcels picked up and not yet delivered, in pickup order
let connection = 0; // acks are only valid on the connection that received the parcel
const delivered = new Set(); // parcels this driver delivered
let driving = false;
let offDuty = false;

socket.on("connect", () => {
  // After any reconnection, recovered session or not, the hub gives out again what we held,
  // with new ack callbacks: forget the parcels in the van and never call their old callbacks.
  connection++;
  if (van.length > 0) {
    log(driver, `${van.length} parcels in the van go back to the depot`);
    van.length = 0;
  }
});

socket.on("parcel.ready", (parcel, meta, ack) => {
  if (offDuty) return; // not acknowledged: handed back when we unsubscribe
  const again = meta.deliveries > 1 ? ` (handed over, attempt ${meta.deliveries})` : "";
  log(driver, `picked up ${parcel.parcel} from ${parcel.vendor}, to ${parcel.to}${again}`);
  van.push({ parcel, ack, connection });
  drive();
});

async function drive() {
  if (driving) return;
  driving = true;
  while (van.length > 0 && !offDuty) {
    const stop = van[0];
    const { parcel } = stop;
    const current = () => !offDuty && stop.connection === connection;
    try {
      if (!delivered.has(parcel.parcel)) {
        await report(parcel, "in-transit", current);
        log(driver, `${parcel.parcel} in transit to ${parcel.to}`);
        await sleep(driveMs);
        if (!current()) continue; // handed back meanwhile; the van was emptied
        await report(parcel, "delivered", current);
        delivered.add(parcel.parcel);
        log(driver, `delivered ${parcel.parcel} to ${parcel.to}`);
      } else {
        log(driver, `${parcel.parcel} was delivered already`);
      }
      // The hub removes the parcel from the queue. A callback from before a reconnection is
      // never called: the parcel came again with a new one, which the next round acks.
      if (current()) stop.ack();
    } catch (err) {
      // Not acknowledged: the hub gives the parcel out again after its ack wait.
      log(driver, `could not report ${parcel.parcel}: ${err.message}`);
    }
    if (van[0] === stop) van.shift();
  }
  driving = false;
}

function report(parcel, status, stillWanted) {
  const update = { parcel: parcel.parcel, vendor: parcel.vendor, status, driver, at: new Date().toISOString() };
  // One `delivered` per parcel whoever delivers it; `in-transit` once per driver that carries it.
  const id = status === "delivered" ? `${parcel.parcel}:delivered` : `${parcel.parcel}:${status}:${driver}`;
  return publish(socket, `parcels.status.${parcel.vendor}`, "parcel.status", update, id, stillWanted);
}

keepSubscribed(
  socket,
  driver,
  // max_ack_pending: at most 4 parcels out with drivers at once; the rest waits at the depot
  { stream: "parcels.ready", consumer: "drivers", from: "all", max_ack_pending: 4 },
  ({ pending }) => log(driver, `on duty; ${pending} parcels were waiting at the depot`),
);

onShutdown(async () => {
  offDuty = true;
  const left = van.length;
  if (socket.connected) {
    // Unsubscribing hands what we hold to the other drivers right away.
    await socket
      .timeout(2000)
      .emitWithAck("courier:unsubscribe", { stream: "parcels.ready" })
      .catch(() => {});
  }
  log(driver, `off duty${left ? `, ${left} parcels handed back to the depot` : ""}`);
  socket.disconnect();
});
