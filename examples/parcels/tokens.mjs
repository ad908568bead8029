// The parcel service's sign-in, in miniature: it gives each vendor and driver a short-lived JSON
// Web Token saying who it is and what it may touch on the hub. In a real deployment this is the
// service's login endpoint; the hub only needs the same secret (or the public key) to check it.

import jwt from "jsonwebtoken";

// The demo secret courier.toml also has. Set COURIER_AUTH_JWT_SECRET for both to change it.
export const SECRET = process.env.COURIER_AUTH_JWT_SECRET || "parcel-demo-secret-change-me";

/** How long a token lasts; the client asks for a fresh one on every (re)connection. */
const LIFETIME_S = 15 * 60;

/** What each role may do: a vendor its own status stream, a driver the depot and the reports. */
const GRANTS = {
  vendor: (name) => ({
    publish: ["parcels.ready"],
    subscribe: [`parcels.status.${name}`],
    consumers: ["desk"],
  }),
  driver: () => ({
    publish: ["parcels.status.*"],
    subscribe: ["parcels.ready"],
    consumers: ["drivers"],
  }),
};

/** A token for `name` in `role` ("vendor" or "driver"). */
export function tokenFor(role, name) {
  return jwt.sign({ sub: `${role}:${name}`, courier: GRANTS[role](name) }, SECRET, {
    algorithm: "HS256",
    expiresIn: LIFETIME_S,
    issuer: "parcel-service",
    audience: "courier",
  });
}
