import type { Client } from 'aedes'
import type { Logger } from 'pino'
import { reasonOfAedesError } from './refusal-reasons.ts'
import { Refusal, connectionOf, type Connections, type DeviceSessions, type Refuse } from './shared.ts'

// Limits Aedes enforces itself (connect timeout, keepalive limit, topic depth, QoS 2 window,
// malformed packets) surface only as errors: count and log each connection's first.

export interface ClientErrorContext {
  deviceSessions: DeviceSessions
  connections: Connections
  refusedClients: WeakSet<Client>
  countedErrors: WeakSet<Error>
  refuse: Refuse
  log: Logger
}

/** Aedes' clientError and connectionError. */
export function clientError (ctx: ClientErrorContext, client: Client, err: Error): void {
  const deviceId = ctx.deviceSessions.get(client)?.deviceId
  if (err instanceof Refusal || ctx.countedErrors.has(err) || ctx.refusedClients.has(client)) {
    ctx.log.debug({ deviceId, err: err.message }, 'client error after refusal')
    return
  }
  const reason = reasonOfAedesError(err)
  if (reason === null) {
    ctx.log.debug({ deviceId, err: err.message }, 'client error')
    return
  }
  ctx.refusedClients.add(client)
  const info = connectionOf(ctx.connections, client)
  ctx.refuse(reason, { deviceId, remoteAddress: info?.remoteAddress, transport: info?.transport, detail: err.message })
}
