import http from 'node:http'
import net from 'node:net'
import type { Duplex } from 'node:stream'
import tls from 'node:tls'
import type { Logger } from 'pino'
import { WebSocketServer, createWebSocketStream } from 'ws'
import { listen } from '../net/listen.ts'
import { readProxyHeader, type ProxyProtocol } from './proxy-protocol.ts'

export type Transport = 'tcp' | 'tls' | 'ws'

/** A connection ready to speak MQTT: TLS handshake or WebSocket upgrade done. */
export interface MqttConnection {
  transport: Transport
  stream: Duplex
  remoteAddress: string | undefined
  /**
   * With mutual TLS, the common name of the client certificate the handshake verified (an array
   * when the subject has several); undefined for connections without mutual TLS.
   */
  certificateCommonName?: string | string[]
  request?: http.IncomingMessage
}

export interface ListenerHooks {
  /** Every accepted TCP connection, before any TLS or HTTP work; false drops it at once. */
  admit (socket: { remoteAddress?: string }, transport: Transport): boolean
  connection (connection: MqttConnection): void
  /** A TLS handshake that failed (old protocol version, missing or untrusted client certificate …). */
  tlsError (err: Error, remoteAddress: string | undefined): void
  /** With the PROXY protocol on: a connection from an untrusted address, or without a valid header. */
  proxyRefused (reason: 'proxy_untrusted' | 'proxy_header_invalid', remoteAddress: string | undefined, transport: Transport, detail: string): void
}

export interface MqttListener {
  readonly transport: Transport
  readonly port: number
  close (): Promise<void>
}

export interface TlsMaterial {
  cert: Buffer
  key: Buffer
  /** Client certificates must chain to one of these (mutual TLS). */
  ca: Buffer | null
}

interface Common {
  host: string
  port: number
  /** The port was a default, not configured: when taken, listen on a free one instead. */
  portFallback?: boolean
  variable: string
  /** Also bounds the TLS handshake and the WebSocket upgrade request. */
  connectTimeoutMs: number
  hooks: ListenerHooks
  log: Logger
  /** PROXY protocol (MQTT_PROXY_PROTOCOL): only from trusted addresses, and then required. */
  proxyProtocol?: ProxyProtocol | null
}

/**
 * The client's address of each connection: the socket's own, or the one its PROXY header gave.
 * Keyed by the proxy side's address and port, which a TLS socket shares with the TCP socket it
 * wraps (a connection's endpoints are unique while it is open).
 */
class ClientAddresses {
  private readonly proxied = new Map<string, string | undefined>()
  private key (socket: { remoteAddress?: string, remotePort?: number }): string {
    return `${socket.remoteAddress ?? ''}|${socket.remotePort ?? ''}`
  }

  set (socket: net.Socket, address: string | undefined): void {
    const key = this.key(socket)
    this.proxied.set(key, address)
    socket.once('close', () => this.proxied.delete(key))
  }

  of (socket: { remoteAddress?: string, remotePort?: number }): string | undefined {
    const key = this.key(socket)
    return this.proxied.has(key) ? this.proxied.get(key) : socket.remoteAddress
  }
}

/**
 * Admission and bookkeeping shared by every listener: refused sockets are dropped before they
 * cost a handshake, and close() ends connections that never became MQTT clients too (Aedes
 * closes only the ones that did), so a half-open socket cannot hold shutdown.
 */
async function serve (server: net.Server, transport: Transport, options: Common, addresses: ClientAddresses): Promise<MqttListener> {
  const sockets = new Set<net.Socket>()
  const admit = (socket: net.Socket): boolean => {
    if (!options.hooks.admit({ remoteAddress: addresses.of(socket) }, transport)) {
      socket.destroy()
      return false
    }
    sockets.add(socket)
    socket.once('close', () => sockets.delete(socket))
    return true
  }
  const proxy = options.proxyProtocol
  let listening: net.Server = server
  if (proxy == null) {
    server.on('connection', (socket: net.Socket) => { admit(socket) })
  } else {
    // The header comes first, before TLS or HTTP: this server reads it, then hands the socket
    // (the bytes after the header put back) to the transport's own server.
    listening = net.createServer((socket) => {
      if (!proxy.trusted(socket.remoteAddress)) {
        options.hooks.proxyRefused('proxy_untrusted', socket.remoteAddress, transport, 'PROXY protocol from an address not in TRUST_PROXY')
        socket.destroy()
        return
      }
      sockets.add(socket)
      socket.once('close', () => sockets.delete(socket))
      readProxyHeader(socket, options.connectTimeoutMs).then((address) => {
        addresses.set(socket, address)
        if (admit(socket)) {
          server.emit('connection', socket)
          socket.resume()
        }
      }, (err: Error) => {
        options.hooks.proxyRefused('proxy_header_invalid', socket.remoteAddress, transport, err.message)
        socket.destroy()
      })
    })
  }
  const port = await listen(listening, options.host, options.port, options.portFallback === true, options.variable, options.log)
  return {
    transport,
    port,
    async close () {
      const closed = new Promise<void>((resolve) => listening.close(() => resolve()))
      for (const socket of sockets) socket.destroy()
      await closed
    }
  }
}

export async function listenTcp (options: Common): Promise<MqttListener> {
  const addresses = new ClientAddresses()
  const tcp = net.createServer((socket) => {
    options.hooks.connection({ transport: 'tcp', stream: socket, remoteAddress: addresses.of(socket) })
  })
  return await serve(tcp, 'tcp', options, addresses)
}

/** MQTT over TLS (MQTT 3.1.1 §5.1 and the IANA port 8883), TLS 1.2 or later only. */
export async function listenTls (options: Common & { tls: TlsMaterial }): Promise<MqttListener> {
  const mutual = options.tls.ca !== null
  const addresses = new ClientAddresses()
  const server = tls.createServer({
    cert: options.tls.cert,
    key: options.tls.key,
    minVersion: 'TLSv1.2',
    handshakeTimeout: options.connectTimeoutMs,
    // rejectUnauthorized stays off so that a refused certificate is seen here, counted and
    // logged: with it on, Node drops an untrusted certificate without saying why.
    ...(mutual ? { ca: options.tls.ca!, requestCert: true, rejectUnauthorized: false } : {})
  }, (socket) => {
    const connection: MqttConnection = { transport: 'tls', stream: socket, remoteAddress: addresses.of(socket) }
    if (mutual) {
      if (!socket.authorized) {
        const presented = Object.keys(socket.getPeerCertificate()).length > 0
        const reason = presented ? String(socket.authorizationError) : 'no client certificate'
        options.hooks.tlsError(Object.assign(new Error(`client certificate refused: ${reason}`), { code: 'ERR_TLS_CLIENT_CERTIFICATE' }), addresses.of(socket))
        socket.destroy()
        return
      }
      connection.certificateCommonName = socket.getPeerCertificate().subject?.CN ?? ''
    }
    options.hooks.connection(connection)
  })
  server.on('tlsClientError', (err, socket) => options.hooks.tlsError(err, addresses.of(socket)))
  return await serve(server, 'tls', options, addresses)
}

/**
 * MQTT over WebSocket (MQTT 3.1.1 §6) on `/mqtt`. One WebSocket message may carry part of an
 * MQTT packet or several (MQTT-6.0.0-2), so the frame limit still runs on the byte stream;
 * maxPayload bounds what ws buffers for a single message before that.
 */
export async function listenWebSocket (options: Common & { maxPayloadBytes: number }): Promise<MqttListener> {
  const addresses = new ClientAddresses()
  const server = http.createServer({
    headersTimeout: options.connectTimeoutMs,
    requestTimeout: options.connectTimeoutMs,
    connectionsCheckingInterval: Math.min(1000, options.connectTimeoutMs)
  }, (_request, response) => {
    response.writeHead(426, { connection: 'close', upgrade: 'websocket', 'content-type': 'text/plain' })
    response.end('MQTT over WebSocket: connect to /mqtt with the "mqtt" subprotocol\n')
  })
  const wss = new WebSocketServer({
    server,
    path: '/mqtt',
    maxPayload: options.maxPayloadBytes,
    perMessageDeflate: false,
    clientTracking: false,
    // MQTT-6.0.0-3/-4: the client offers "mqtt" and the server selects it; a client offering
    // only something else gets no subprotocol, which RFC 6455 §4.1 has it fail the handshake.
    handleProtocols: (offered) => offered.has('mqtt') ? 'mqtt' : false
  })
  wss.on('connection', (ws, request) => {
    options.hooks.connection({ transport: 'ws', stream: createWebSocketStream(ws), remoteAddress: addresses.of(request.socket), request })
  })
  const listener = await serve(server, 'ws', options, addresses)
  return {
    transport: 'ws',
    port: listener.port,
    async close () {
      wss.close()
      await listener.close()
    }
  }
}
