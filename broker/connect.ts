import type { AuthenticateError, Client, ConnectPacket } from 'aedes'
import { defaultOptions } from './options.ts'
import type { RefusalReason } from './refusal-reasons.ts'
import { DEVICE_ID, Refusal, connectionOf, type ConnectionInfo, type Connections, type Refuse } from './shared.ts'

// The CONNECT up to its CONNACK: what a client id may be, and the connect timeout that runs
// from the socket's acceptance to the answer. Who the client is: authenticate.ts.

// What any client id must look like before anything else reads it: no wildcards (+ #), no
// topic separator (/), no control characters, nothing a topic or log could misread.
const CLIENT_ID = new RegExp(`^[A-Za-z0-9_-]{1,${defaultOptions.maxClientIdLength}}$`)

// Refusals that come in floods: only the first of a run is logged at warn, the rest at debug.
const FLOOD_REASONS: ReadonlySet<RefusalReason> = new Set(['connect_rate_limited', 'locked_out'])

/** The client id and clean flag as sent. */
export interface SentConnect { clientId: string, clean: boolean }

/** The CONNECT as sent, by client: Aedes swaps an empty client id for a generated one before authenticate runs. */
export type ConnectPackets = WeakMap<Client, SentConnect>

export interface PreConnectContext {
  connections: Connections
  connectPackets: ConnectPackets
  /** Clients whose refusal is already counted: Aedes may report more errors as the socket dies. */
  refusedClients: WeakSet<Client>
  refuse: Refuse
}

/** Aedes' preConnect: keeps the CONNECT as sent and refuses what no later check may read. */
export function preConnect (ctx: PreConnectContext, client: Client, packet: ConnectPacket, done: (error: Error | null, success: boolean) => void): void {
  const clientId = typeof packet.clientId === 'string' ? packet.clientId : ''
  ctx.connectPackets.set(client, { clientId, clean: packet.clean !== false })
  // Vigil speaks MQTT 3.1.1 only, but Aedes also accepts 3.1 (MQIsdp, level 3). Below 3 is
  // Aedes' own refusal path for an unacceptable level: CONNACK 1 (MQTT-3.1.2-2), then close,
  // counted as protocol_version like any other unsupported level.
  if (packet.protocolVersion === 3) packet.protocolVersion = 2 as typeof packet.protocolVersion
  // MQTT-1.5.3-2: a UTF-8 string holding U+0000 makes the receiver close the connection.
  const nulIn = clientId.includes('\u0000')
    ? 'client_id_invalid'
    : typeof packet.username === 'string' && packet.username.includes('\u0000') ? 'username_invalid' : null
  if (nulIn !== null) {
    const info = connectionOf(ctx.connections, client)
    ctx.refuse(nulIn, { remoteAddress: info?.remoteAddress, transport: info?.transport, detail: 'U+0000 in a string (MQTT-1.5.3-2)' })
    ctx.refusedClients.add(client)
    return done(new Refusal(nulIn, 'U+0000 in a UTF-8 string'), false)
  }
  done(null, true)
}

export interface ConnectContext extends PreConnectContext {
  connectTimeoutMs: number
  /** Told of each refusal before its CONNACK goes out (the login budget counts refused credentials). */
  refused (reason: RefusalReason, remoteAddress: string | undefined): void
}

/** One CONNECT being answered: exactly one CONNACK, whichever of the check or the timeout comes first. */
export interface ConnectAttempt {
  readonly info: ConnectionInfo | undefined
  readonly sent: SentConnect
  /** The CONNACK is decided (accepted, refused or timed out): a late answer is ignored. */
  readonly settled: boolean
  accept (): void
  refuse (reason: RefusalReason, returnCode: 2 | 3 | 5, fields?: Record<string, unknown>): void
}

/**
 * Starts answering a CONNECT (from Aedes' authenticate). Aedes stops its connect timer when the
 * CONNECT arrives; the credential check (a database query, scrypt, perhaps queued) runs on the
 * same clock: past MQTT_CONNECT_TIMEOUT_SECONDS from the socket's acceptance the client gets
 * CONNACK 3 (retry later) and a late answer is ignored.
 */
export function beginConnect (ctx: ConnectContext, client: Client, username: string | undefined, answer: (error: AuthenticateError | null, success: boolean | null) => void): ConnectAttempt {
  const info = connectionOf(ctx.connections, client)
  const remoteAddress = info?.remoteAddress
  const sent = ctx.connectPackets.get(client) ?? { clientId: client.id, clean: client.clean }
  let settled = false
  const settle = (err: AuthenticateError | null, ok: boolean): void => {
    if (settled) return
    settled = true
    clearTimeout(timer)
    answer(err, ok)
  }
  const attempt: ConnectAttempt = {
    info,
    sent,
    get settled () { return settled },
    accept () { settle(null, true) },
    refuse (reason, returnCode, fields = {}) {
      if (settled) return
      const level = reason === 'auth_unavailable' ? 'error' : FLOOD_REASONS.has(reason) ? 'debug' : 'warn'
      ctx.refuse(reason, { remoteAddress, transport: info?.transport, ...fields }, level)
      ctx.refusedClients.add(client)
      ctx.refused(reason, remoteAddress)
      const message = returnCode === 2 ? 'identifier rejected' : returnCode === 3 ? 'server unavailable' : 'not authorized'
      settle(new Refusal(reason, message, returnCode) as unknown as AuthenticateError, false)
    }
  }
  const timer = setTimeout(() => {
    attempt.refuse('connect_timeout', 3, { deviceId: DEVICE_ID.test(username ?? '') ? username : undefined, detail: 'credential check did not finish in time' })
  }, Math.max(0, (info?.acceptedAt ?? Date.now()) + ctx.connectTimeoutMs - Date.now()))
  return attempt
}

/** The client id first: nothing else may read it before it is known to be harmless. False: refused. */
export function clientIdAccepted (attempt: ConnectAttempt): boolean {
  // MQTT-3.1.3-8: a zero-byte client id with CleanSession 0 gets CONNACK 0x02. With
  // CleanSession 1 a server may assign one (MQTT-3.1.3-6), but a Vigil client id is the
  // device id, so it is rejected too (MQTT-3.1.3-9: CONNACK 0x02, then close).
  if (attempt.sent.clientId === '') {
    attempt.refuse('client_id_empty', 2, { clean: attempt.sent.clean })
    return false
  }
  if (!CLIENT_ID.test(attempt.sent.clientId)) {
    attempt.refuse('client_id_invalid', 2)
    return false
  }
  return true
}
