import { io } from "socket.io-client";
const [url, consumer, from, acks, ms] = process.argv.slice(2);
const s = io(url, { transports: ["websocket"] });
let n = 0;
s.on("order", (data, meta, ack) => { console.log(url.slice(-4), "got", JSON.stringify(meta)); if (++n <= +acks) ack(); });
s.on("connect", () => s.emit("courier:subscribe", { stream: "orders", consumer, from }, (r) => console.log("sub", JSON.stringify(r))));
setTimeout(() => { s.close(); setTimeout(() => process.exit(0), 200); }, +ms);
