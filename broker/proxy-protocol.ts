import net from 'node:net'
import { protocolDecoder } from 'aedes-protocol-decoder'

/**
 * The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2) on MQTT listeners: a TCP
 * load balancer in front (HAProxy `send-proxy` / `send-proxy-v2`) writes the client's address
 * before the first MQTT (or TLS) byte, so per-address limits, lockouts and refusal logs see the
 * device and not the balancer. Parsing is aedes-protocol-decoder's (Aedes 1.2 no longer calls
 * its `decodeProtocol` option: the listener reads the header itself, then hands the stream on).
 */

export interface ProxyProtocol {
  /** Whether a connection from this address may speak the PROXY protocol (TRUST_PROXY). */
  trusted (address: string | undefined): boolean
}

export class ProxyHeaderError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'ProxyHeaderError'
  }
}

const V1 = Buffer.from('PROXY ', 'latin1')
const V2 = Buffer.from('0d0a0d0a000d0a515549540a', 'hex')
// proxy-protocol.txt §2.1: a v1 line is at most 107 bytes with its CRLF.
const V1_MAX = 107
// Addresses (at most 216 bytes for AF_UNIX) and a few TLVs; a longer header is refused.
const V2_MAX = 16 + 1024

/** A trust list from addresses and CIDR ranges (the form TRUST_PROXY takes). */
export function proxyTrustList (entries: readonly string[]): ProxyProtocol {
  const list = new net.BlockList()
  for (const entry of entries) {
    const [address, prefix] = entry.split('/') as [string, string | undefined]
    const family = net.isIPv4(address) ? 'ipv4' : 'ipv6'
    if (prefix === undefined) list.addAddress(address, family)
    else list.addSubnet(address, Number(prefix), family)
  }
  return {
    trusted (address) {
      if (address === undefined) return false
      const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)
      if (mapped !== null) return list.check(mapped[1]!, 'ipv4')
      return list.check(address, net.isIPv4(address) ? 'ipv4' : 'ipv6')
    }
  }
}

/** How many bytes the header at the start of `buffer` takes; null: more bytes are needed. */
function headerLength (buffer: Buffer): number | null {
  const v1 = buffer.subarray(0, V1.length)
  const v2 = buffer.subarray(0, V2.length)
  if (v1.equals(V1.subarray(0, v1.length)) && buffer.length > 0 && buffer[0] === V1[0]) {
    const end = buffer.indexOf('\r\n', 0, 'latin1')
    if (end !== -1 && end + 2 <= V1_MAX) return end + 2
    if (buffer.length >= V1_MAX) throw new ProxyHeaderError('PROXY v1 line longer than 107 bytes')
    return null
  }
  if (v2.equals(V2.subarray(0, v2.length)) && buffer.length > 0 && buffer[0] === V2[0]) {
    if (buffer.length < 16) return null
    const total = 16 + buffer.readUInt16BE(14)
    if (total > V2_MAX) throw new ProxyHeaderError('PROXY v2 header too long')
    return buffer.length >= total ? total : null
  }
  // proxy-protocol.txt §2: the receiver must not guess; without a header the connection is refused.
  throw new ProxyHeaderError('no PROXY protocol header')
}

/**
 * Reads the PROXY header from a socket freshly accepted from a trusted proxy and returns the
 * client's address; bytes after the header are put back for TLS or MQTT to read. A LOCAL (v2)
 * or UNKNOWN (v1) header (the proxy's own health check) keeps the proxy's address.
 */
export async function readProxyHeader (socket: net.Socket, timeoutMs: number): Promise<string | undefined> {
  return await new Promise((resolve, reject) => {
    let buffered = Buffer.alloc(0)
    const timer = setTimeout(() => finish(new ProxyHeaderError('no complete PROXY header in time')), timeoutMs)
    const finish = (err: Error | null, address?: string, rest?: Buffer): void => {
      clearTimeout(timer)
      socket.off('data', onData)
      socket.off('close', onClose)
      socket.pause()
      if (err !== null) return reject(err)
      if (rest !== undefined && rest.length > 0) socket.unshift(rest)
      resolve(address)
    }
    const onClose = (): void => finish(new ProxyHeaderError('closed before the PROXY header'))
    const onData = (chunk: Buffer): void => {
      buffered = Buffer.concat([buffered, chunk])
      let length: number | null
      try {
        length = headerLength(buffered)
      } catch (err) {
        return finish(err as Error)
      }
      if (length === null) return
      const header = buffered.subarray(0, length)
      const rest = buffered.subarray(length)
      try {
        finish(null, clientAddress(socket, header), rest)
      } catch (err) {
        finish(err as Error)
      }
    }
    socket.on('data', onData)
    socket.once('close', onClose)
  })
}

function clientAddress (socket: net.Socket, header: Buffer): string | undefined {
  const local = header[0] === V2[0] ? (header[12]! & 0x0f) === 0 : header.toString('latin1').startsWith('PROXY UNKNOWN')
  if (local) return socket.remoteAddress
  let details: ReturnType<typeof protocolDecoder>
  try {
    details = protocolDecoder(socket, header)
  } catch (err) {
    throw new ProxyHeaderError(`malformed PROXY header: ${(err as Error).message}`)
  }
  if (details.isProxy === 0 || typeof details.ipAddress !== 'string' || net.isIP(details.ipAddress) === 0) {
    throw new ProxyHeaderError('malformed PROXY header')
  }
  return details.ipAddress
}
