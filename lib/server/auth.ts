// Who may talk to the server: loopback-only unless an API key is set; bearer-key checks in constant time;
// Host-header check against DNS rebinding when the server relies on being loopback-only.
import { createHash, timingSafeEqual } from "node:crypto";
import net from "node:net";
import { InvalidArgumentError } from "../errors.js";

export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[(.*)\]$/, "$1").toLowerCase();
  if (h === "localhost") return true;
  if (net.isIPv4(h)) return h.startsWith("127.");
  if (net.isIPv6(h)) return h === "::1" || h.startsWith("::ffff:127.");
  return false;
}

/** Refuses to expose the model on a network address without an API key. */
export function assertBindAllowed(host: string, apiKey: string | undefined): void {
  if (!isLoopbackHost(host) && !apiKey)
    throw new InvalidArgumentError(
      "--host",
      `binding ${host} would expose the model to the network without authentication; pass --api-key KEY, or bind 127.0.0.1`,
    );
}

// Comparing SHA-256 digests gives equal-length buffers for timingSafeEqual whatever the key lengths,
// so neither the key's content nor its length leaks through timing.
const digest = (s: string): Buffer => createHash("sha256").update(s, "utf8").digest();

export function bearerChecker(apiKey: string): (authorization: string | undefined) => boolean {
  const want = digest(apiKey);
  return (authorization) => {
    const m = /^Bearer[ ]+(\S+)\s*$/i.exec(authorization ?? "");
    const ok = timingSafeEqual(digest(m?.[1] ?? ""), want);
    return ok && m !== null;
  };
}

/**
 * With no API key the only protection is that the server is on loopback; a DNS-rebinding page could
 * still reach it under its own host name. So only loopback names are accepted in the Host header then.
 */
export function hostHeaderAllowed(hostHeader: string | undefined): boolean {
  if (!hostHeader) return false;
  const m = /^(\[[^\]]+\]|[^:]+)(?::\d+)?$/.exec(hostHeader);
  return m !== null && isLoopbackHost(m[1]!);
}
