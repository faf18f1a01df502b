import { lookup as dnsLookup, type LookupAddress, type LookupOptions } from 'node:dns'
import http from 'node:http'
import https from 'node:https'
import { BlockList, isIP } from 'node:net'

/**
 * Where a webhook may be delivered (issue 11 item 10): https to public addresses only, unless
 * the rules file's `webhookAllowList` names the URL's origin (a test receiver, an internal
 * pager gateway). Checked when the rules file is read and again on the address the host
 * resolves to at delivery (DNS rebinding), and delivery connects to that checked address.
 */

// IANA special-purpose registries (RFC 6890 and updates): nothing here is "the internet".
const notPublic = new BlockList()
for (const [net, prefix] of [
  ['0.0.0.0', 8], ['10.0.0.0', 8], ['100.64.0.0', 10], ['127.0.0.0', 8], ['169.254.0.0', 16], ['172.16.0.0', 12],
  ['192.0.0.0', 24], ['192.0.2.0', 24], ['192.88.99.0', 24], ['192.168.0.0', 16], ['198.18.0.0', 15], ['198.51.100.0', 24],
  ['203.0.113.0', 24], ['224.0.0.0', 4], ['240.0.0.0', 4]
] as const) notPublic.addSubnet(net, prefix, 'ipv4')
for (const [net, prefix] of [
  ['::', 128], ['::1', 128], ['64:ff9b::', 96], ['64:ff9b:1::', 48], ['100::', 64], ['2001::', 23], ['2001:db8::', 32],
  ['2002::', 16], ['fc00::', 7], ['fe80::', 10], ['fec0::', 10], ['ff00::', 8]
] as const) notPublic.addSubnet(net, prefix, 'ipv6')

/** Whether `address` (an IP literal) is a public unicast address. */
export function isPublicAddress (address: string): boolean {
  const family = isIP(address)
  if (family === 4) return !notPublic.check(address, 'ipv4')
  if (family !== 6) return false
  const lower = address.toLowerCase()
  // IPv4-mapped (::ffff:a.b.c.d or ::ffff:7f00:1): judge the IPv4 address inside.
  const mapped = /^(?:0{0,4}:){0,5}ffff:(.+)$/.exec(lower)
  if (mapped !== null) {
    const tail = mapped[1]!
    if (isIP(tail) === 4) return isPublicAddress(tail)
    const words = tail.split(':')
    if (words.length === 2) {
      const n = (parseInt(words[0]!, 16) << 16 >>> 0) + parseInt(words[1]!, 16)
      return isPublicAddress([n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.'))
    }
    return false
  }
  return !notPublic.check(lower, 'ipv6')
}

/** `scheme://host[:port]` as the WHATWG URL parser normalizes it (so 0x7f000001 is 127.0.0.1). */
export function originOf (url: string): string | null {
  try {
    return new URL(url).origin
  } catch {
    return null
  }
}

/** The environment variables a webhook secret may come from: never VIGIL_ADMIN_TOKEN or a database password. */
export const WEBHOOK_SECRET_PREFIX = 'VIGIL_WEBHOOK_'

/** Why a webhook URL is refused when the rules file is read, or null. */
export function webhookUrlProblem (url: string, allowList: ReadonlySet<string>): string | null {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    return 'url must be a valid http(s) URL'
  }
  if (parsed.username !== '' || parsed.password !== '') return 'url must not carry a user name or password'
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') return 'url must be a valid http(s) URL'
  if (allowList.has(parsed.origin)) return null
  if (parsed.protocol !== 'https:') return `url must be https (or its origin ${parsed.origin} listed in webhookAllowList)`
  const host = parsed.hostname.replace(/^\[|\]$/g, '')
  if (isIP(host) !== 0 ? !isPublicAddress(host) : host === 'localhost' || host.endsWith('.localhost') || !host.includes('.')) {
    return `url must name a public host (or its origin ${parsed.origin} listed in webhookAllowList)`
  }
  return null
}

/** A delivery refused before any connection: the reason is recorded with the attempt. */
export class WebhookAddressError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'WebhookAddressError'
  }
}

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void

/**
 * A `lookup` for http(s).request that resolves the host once, refuses it unless every address
 * is public, and hands the socket the address it checked: no second resolution between the
 * check and the connect (DNS rebinding). IP literals reach it too (Node calls lookup for them).
 */
export function publicOnlyLookup (hostname: string, options: LookupOptions, callback: LookupCallback): void {
  dnsLookup(hostname, { all: true, family: options.family, hints: options.hints }, (err, addresses) => {
    if (err !== null) return callback(err, [])
    const refused = addresses.find((a) => !isPublicAddress(a.address))
    if (refused !== undefined || addresses.length === 0) {
      return callback(new WebhookAddressError(`${hostname} resolves to a non-public address (${refused?.address ?? 'none'}): not delivered; list its origin in webhookAllowList to allow it`), [])
    }
    if (options.all === true) callback(null, addresses)
    else callback(null, addresses[0]!.address, addresses[0]!.family)
  })
}

/**
 * POSTs a webhook body; resolves with the HTTP status. Not allow-listed: https only, and the
 * address connected to is checked (an IP literal here, a name through publicOnlyLookup).
 * Redirects are not followed (a 3xx is a failed attempt).
 */
export async function postWebhook (target: { url: string, allowListed?: boolean }, headers: Record<string, string>, body: string, timeoutMs: number): Promise<number> {
  const url = new URL(target.url)
  const allowListed = target.allowListed === true
  if (url.username !== '' || url.password !== '') throw new WebhookAddressError('url carries a user name or password: not delivered')
  if (!allowListed) {
    if (url.protocol !== 'https:') throw new WebhookAddressError(`${url.origin} is not https: not delivered; list it in webhookAllowList to allow it`)
    const host = url.hostname.replace(/^\[|\]$/g, '')
    // Node connects to an IP literal without calling lookup: check it here.
    if (isIP(host) !== 0 && !isPublicAddress(host)) throw new WebhookAddressError(`${host} is not a public address: not delivered; list its origin in webhookAllowList to allow it`)
  }
  const request = url.protocol === 'https:' ? https.request : http.request
  return await new Promise<number>((resolve, reject) => {
    const req = request(url, {
      method: 'POST',
      headers: { ...headers, 'content-length': String(Buffer.byteLength(body)) },
      signal: AbortSignal.timeout(timeoutMs),
      ...(allowListed ? {} : { lookup: publicOnlyLookup as never })
    }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode ?? 0))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(body)
  })
}
