import type http from 'node:http'
import type { Duplex } from 'node:stream'
import type { Client } from 'aedes'
import type { Logger } from 'pino'
import type { AddressGuard } from './address-guard.ts'
import { FrameTooLargeError, SlowSubscriberError, UnexpectedPacketTypeError, limitFrames, type StreamLimits } from './frame-limit.ts'
import { listenTcp, listenTls, listenWebSocket, type ListenerHooks, type MqttListener, type TlsMaterial } from './listeners.ts'
import type { ProxyProtocol } from './proxy-protocol.ts'
import { reasonOfTlsError, type RefusalReason } from './refusal-reasons.ts'
import type { Connections, DeviceSessions, Refuse } from './shared.ts'

// The broker's TCP, TLS and WebSocket listeners (sockets: listeners.ts): every transport goes
// through the same admission (connect rate per address) and frame limits before Aedes reads it.

export interface TransportContext {
  guard: AddressGuard
  limits: StreamLimits
  connections: Connections
  deviceSessions: DeviceSessions
  refusedClients: WeakSet<Client>
  refuse: Refuse
  /** Hands a ready stream to Aedes. */
  handle (stream: Duplex, request: http.IncomingMessage | undefined): void
  log: Logger
}

/** What the listeners call back: admission, each ready connection, failed TLS handshakes. */
export function listenerHooks (ctx: TransportContext): ListenerHooks {
  return {
    admit (socket, transport) {
      const admission = ctx.guard.admitConnection(socket.remoteAddress ?? '')
      if (admission === 'admitted') return true
      ctx.refuse('connect_rate_limited', { remoteAddress: socket.remoteAddress, transport }, admission === 'refused_first' ? 'warn' : 'debug')
      return false
    },
    connection ({ transport, stream, remoteAddress, certificateCommonName, request }) {
      const limited = limitFrames(stream, ctx.limits, remoteAddress, (err) => {
        const client = (limited as Duplex & { client?: Client }).client
        if (client !== undefined) ctx.refusedClients.add(client)
        const reason: RefusalReason = err instanceof FrameTooLargeError
          ? 'packet_too_large'
          : err instanceof SlowSubscriberError
            ? 'slow_subscriber'
            : err instanceof UnexpectedPacketTypeError ? 'protocol_violation' : 'malformed_packet'
        ctx.refuse(reason, { deviceId: client === undefined ? undefined : ctx.deviceSessions.get(client)?.deviceId, remoteAddress, transport, detail: err.message })
      })
      ctx.connections.set(limited, { transport, remoteAddress, certificateCommonName, acceptedAt: Date.now() })
      ctx.handle(limited, request)
    },
    tlsError (err, remoteAddress) {
      const reason = reasonOfTlsError(err)
      if (reason === null) {
        ctx.log.debug({ remoteAddress, err: err.message }, 'TLS connection dropped during handshake')
        return
      }
      ctx.refuse(reason, { remoteAddress, transport: 'tls', detail: err.message })
    },
    proxyRefused (reason, remoteAddress, transport, detail) {
      ctx.refuse(reason, { remoteAddress, transport, detail })
    }
  }
}

export interface OpenListenersOptions {
  host: string
  port: number
  portFallback?: boolean
  tls?: (TlsMaterial & { port: number }) | null
  wsPort?: number | null
  connectTimeoutMs: number
  maxPacketBytes: number
  /** PROXY protocol on every listener (MQTT_PROXY_PROTOCOL). */
  proxyProtocol?: ProxyProtocol | null
  hooks: ListenerHooks
  log: Logger
}

/** Opens TCP, and TLS and WebSocket when configured; when one fails, closes those already open and throws. */
export async function openListeners (options: OpenListenersOptions): Promise<MqttListener[]> {
  const listeners: MqttListener[] = []
  const common = { host: options.host, connectTimeoutMs: options.connectTimeoutMs, hooks: options.hooks, log: options.log, proxyProtocol: options.proxyProtocol ?? null }
  try {
    listeners.push(await listenTcp({ ...common, port: options.port, portFallback: options.portFallback, variable: 'MQTT_PORT' }))
    if (options.tls != null) {
      listeners.push(await listenTls({ ...common, port: options.tls.port, variable: 'MQTT_TLS_PORT', tls: options.tls }))
    }
    if (options.wsPort != null) {
      listeners.push(await listenWebSocket({ ...common, port: options.wsPort, variable: 'MQTT_WS_PORT', maxPayloadBytes: options.maxPacketBytes }))
    }
  } catch (err) {
    await closeListeners(listeners)
    throw err
  }
  return listeners
}

/** Stops accepting and drops connections that never became clients (Aedes closes the rest). */
export async function closeListeners (listeners: MqttListener[]): Promise<void> {
  await Promise.all(listeners.splice(0).map((l) => l.close()))
}
