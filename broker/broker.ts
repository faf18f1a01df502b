import type { Duplex } from 'node:stream'
import { Aedes, type Client } from 'aedes'
import { createLogThrottle } from '../observability/log-throttle.ts'
import { createAddressGuard } from './address-guard.ts'
import { aedesPublisher } from './alert-publisher.ts'
import { authenticate, countCredentialFailure } from './authenticate.ts'
import { authorizeForward } from './authorize-forward.ts'
import { authorizePublish } from './authorize-publish.ts'
import { authorizeSubscribe } from './authorize-subscribe.ts'
import { clientError } from './client-errors.ts'
import { preConnect, type ConnectContext, type ConnectPackets } from './connect.ts'
import { credentialRevoked, deviceGone, deviceReady, recheckDeviceCredentials, type DeviceSessionContext } from './device-sessions.ts'
import type { MqttListener, Transport } from './listeners.ts'
import { defaultOptions, type BrokerDeps } from './options.ts'
import { createPeopleSessions, forgetPersonSession, recheckPeople, recheckTiming, startRechecks, type RecheckContext } from './people-sessions.ts'
import { createRefuse, type Connections, type DeviceSessions } from './shared.ts'
import { closeListeners, listenerHooks, openListeners } from './transports.ts'

export { BEARER_USERNAME, brokerLimitsFrom, defaultOptions } from './options.ts'
export type { AlertSubscriberAuth, BrokerDeps, BrokerLimits, BrokerPresenceHooks } from './options.ts'

export interface BrokerHandle {
  /** The TCP port actually bound (differs from the configured one when that was 0). */
  readonly port: number
  /** The TLS port bound, or null without TLS. */
  readonly tlsPort: number | null
  /** The WebSocket port bound, or null without WebSocket. */
  readonly wsPort: number | null
  readonly aedes: Aedes
  /** Checks every person's session again now (the interval does it on its own); resolves with how many were closed. */
  recheckPeople (): Promise<number>
  /** Checks every device session's credential again now (revocations may have been missed: clustering); resolves with how many were closed. */
  recheckDevices (): Promise<number>
  close (): Promise<void>
}

/**
 * The embedded Aedes broker with device authentication, per-device topic ACLs, limits on what one
 * connection or address may cost (frame size, unsent bytes, connect rate, credential guessing,
 * in-flight QoS 2), and the durable-before-PUBACK hook (authorize-publish.ts). Serves MQTT over
 * TCP, and over TLS and WebSocket when configured; every transport goes through the same limits.
 * Each Aedes hook lives in its own file and gets what it reads and writes here, explicitly.
 */
export async function createBroker (deps: BrokerDeps): Promise<BrokerHandle> {
  const log = deps.log.child({ component: 'broker' })
  const { metrics, devices, ingest, limits, alertSubscribers } = deps

  // State the hooks share, per connection; WeakMaps so closed clients leave nothing behind.
  const connections: Connections = new WeakMap()
  const connectPackets: ConnectPackets = new WeakMap()
  const deviceSessions: DeviceSessions = new WeakMap()
  const people = createPeopleSessions()
  // Clients whose refusal is already counted: Aedes may report more errors as the socket dies.
  const refusedClients = new WeakSet<Client>()
  // Errors handed to Aedes after being counted (ingest failures): Aedes reports them back.
  const countedErrors = new WeakSet<Error>()
  const refuse = createRefuse(metrics, log)
  const guard = createAddressGuard({
    connectsPerMinute: limits.connectRatePerAddress,
    failuresBeforeLockout: limits.authFailuresBeforeLockout,
    failureWindowMs: limits.authFailureWindowMs,
    lockoutMs: limits.lockoutMs
  })
  // A full disk or a store outage refuses every publish for one cause: one line per reason per
  // interval with a count, not a stack trace per publish written onto that same disk.
  const storeRefusals = createLogThrottle(log)
  const recheck = recheckTiming(alertSubscribers)

  const connect: ConnectContext = {
    connections,
    connectPackets,
    refusedClients,
    refuse,
    connectTimeoutMs: limits.connectTimeoutMs,
    refused: (reason, remoteAddress) => countCredentialFailure({ guard, lockoutMs: limits.lockoutMs, log }, reason, remoteAddress)
  }
  const authenticateContext = { connect, guard, devices, deviceSessions, alertSubscribers, people }
  const publishContext = { deviceSessions, refusedClients, countedErrors, refuse, metrics, storeRefusals, ingest, presence: deps.presence, diskLow: deps.diskLow }
  const subscribeContext = { deviceSessions, people, alertSubscribers, refuse }
  const forwardContext = { deviceSessions, people, verdictMaxAgeMs: recheck.verdictMaxAgeMs, refuse }

  const aedes = await Aedes.createBroker({
    connectTimeout: limits.connectTimeoutMs,
    keepaliveLimit: limits.keepaliveLimitSeconds,
    maxInflightInbound: limits.maxInflightQos2,
    maxClientsIdLength: defaultOptions.maxClientIdLength,
    maxTopicLevels: limits.maxTopicLevels,
    drainTimeout: defaultOptions.drainTimeoutMs,
    ...(deps.mq == null ? {} : { mq: deps.mq }),
    preConnect: (client, packet, done) => preConnect(connect, client, packet, done),
    authenticate: (client, username, password, done) => authenticate(authenticateContext, client, username, password, done),
    authorizePublish: (client, packet, done) => authorizePublish(publishContext, client, packet, done),
    authorizeSubscribe: (client, subscription, done) => authorizeSubscribe(subscribeContext, client, subscription, done),
    authorizeForward: (client, packet) => authorizeForward(forwardContext, client, packet)
  })

  const clientById = (clientId: string): Client | undefined => (aedes as unknown as { clients: Record<string, Client | undefined> }).clients[clientId]
  const deviceContext: DeviceSessionContext = { deviceSessions, presentDevices: new WeakMap(), presence: deps.presence, devices, clientById, log }
  aedes.on('clientReady', (client) => {
    metrics.connectedDevices.inc()
    deviceReady(deviceContext, client)
  })
  aedes.on('clientDisconnect', (client) => {
    metrics.connectedDevices.dec()
    forgetPersonSession(people, client)
    deviceGone(deviceContext, client)
  })
  const errorContext = { deviceSessions, connections, refusedClients, countedErrors, refuse, log }
  const onClientError = (client: Client, err: Error): void => clientError(errorContext, client, err)
  aedes.on('clientError', onClientError)
  aedes.on('connectionError', onClientError)
  const onRevoked = (deviceId: string): void => credentialRevoked(deviceContext, deviceId)
  devices.events.on('credentials-revoked', onRevoked)

  const hooks = listenerHooks({
    guard,
    limits,
    connections,
    deviceSessions,
    refusedClients,
    refuse,
    handle: (stream: Duplex, request) => aedes.handle(stream, request),
    log
  })
  let listeners: MqttListener[]
  try {
    listeners = await openListeners({ host: deps.host, port: deps.port, portFallback: deps.portFallback, tls: deps.tls, wsPort: deps.wsPort, connectTimeoutMs: limits.connectTimeoutMs, maxPacketBytes: limits.maxPacketBytes, proxyProtocol: deps.proxyProtocol, hooks, log })
  } catch (err) {
    await new Promise<void>((resolve) => aedes.close(() => resolve()))
    guard.close()
    storeRefusals.close()
    throw err
  }
  const portOf = (transport: Transport): number | null => listeners.find((l) => l.transport === transport)?.port ?? null

  const recheckContext: RecheckContext = { people, subscribers: alertSubscribers, refuse }
  const stopRechecks = startRechecks(recheckContext, recheck.intervalMs)
  const detachAlerts = deps.alertRelay?.attach(aedesPublisher(aedes))

  return {
    recheckPeople: async () => await recheckPeople(recheckContext),
    recheckDevices: async () => await recheckDeviceCredentials(deviceContext, Object.values((aedes as unknown as { clients: Record<string, Client> }).clients)),
    port: portOf('tcp')!,
    tlsPort: portOf('tls'),
    wsPort: portOf('ws'),
    aedes,
    async close () {
      detachAlerts?.()
      stopRechecks()
      devices.events.off('credentials-revoked', onRevoked)
      // Stop accepting and drop connections that never became clients; Aedes closes the rest.
      const listenersClosed = closeListeners(listeners)
      await new Promise<void>((resolve) => aedes.close(() => resolve()))
      await listenersClosed
      guard.close()
      storeRefusals.close()
    }
  }
}
