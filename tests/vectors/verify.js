// A third-party ticket verifier in Node.js (>= 16), written from tests/vectors/README.md
// with nothing but the standard library. Usage:
//
//   node tests/vectors/verify.js tests/vectors/tickets.json
//
// prints one JSON object: {"<case name>": {"verdict": "...", "rebuilt": "..."}, ...}.
"use strict";

const crypto = require("crypto");
const fs = require("fs");

const UNSIGNED = ["signature", "__request_id"];

// The signed bytes: the ticket without its unsigned fields, keys sorted, no spaces.
function rebuild(ticket) {
  const signed = {};
  for (const k of Object.keys(ticket).sort()) {
    if (!UNSIGNED.includes(k)) signed[k] = ticket[k];
  }
  return JSON.stringify(signed);
}

function verdict(ticket, keys, now) {
  const key = keys.get(ticket.key_id);
  if (key === undefined) return "unknown_key";
  const data = Buffer.from(rebuild(ticket), "utf8");
  const signature = Buffer.from(ticket.signature, "base64");
  const ok =
    key.asymmetricKeyType === "ed25519"
      ? crypto.verify(null, data, key, signature)
      : crypto.verify(
          "sha256",
          data,
          { key, padding: crypto.constants.RSA_PKCS1_PADDING },
          signature,
        );
  if (!ok) return "bad_signature";
  if (ticket.expires_at < now) return "expired";
  return "valid";
}

function main() {
  const doc = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const keys = new Map();
  for (const jwk of doc.jwks.keys) {
    keys.set(jwk.kid, crypto.createPublicKey({ key: jwk, format: "jwk" }));
  }
  const out = {};
  for (const c of doc.cases) {
    const ticket = JSON.parse(c.served);
    out[c.name] = { verdict: verdict(ticket, keys, c.now), rebuilt: rebuild(ticket) };
  }
  process.stdout.write(JSON.stringify(out));
}

main();
