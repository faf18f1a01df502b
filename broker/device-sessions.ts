import type { Client } from 'aedes'
import type { Logger } from 'pino'
import type { DeviceRegistry } from '../devices/device-registry.ts'
import type { BrokerPresenceHooks } from './options.ts'
import type { DeviceSessions } from './shared.ts'

// A device session after its CONNACK: presence told of its connect and disconnect, its
// credential checked once more when ready, and the session closed when the credential is revoked.

export interface DeviceSessionContext {
  deviceSessions: DeviceSessions
  /** Device sessions whose connect was reported to presence (sessions may be forgotten first on revocation). */
  presentDevices: WeakMap<Client, string>
  presence: BrokerPresenceHooks | null | undefined
  devices: Pick<DeviceRegistry, 'isCredentialActive'>
  /** The live client with this id (Aedes' clients table). */
  clientById (clientId: string): Client | undefined
  log: Logger
}

/** Aedes' clientReady, for a device. */
export function deviceReady (ctx: DeviceSessionContext, client: Client): void {
  const session = ctx.deviceSessions.get(client)
  if (session === undefined) return
  if (ctx.presence != null) {
    ctx.presentDevices.set(client, session.deviceId)
    ctx.presence.connected(session.deviceId)
  }
  // A revocation that landed while scrypt ran would otherwise miss this session.
  ctx.devices.isCredentialActive(session.credentialId).then((active) => {
    if (!active) client.close()
  }, () => {})
}

/** Aedes' clientDisconnect, for a device. */
export function deviceGone (ctx: DeviceSessionContext, client: Client): void {
  const deviceId = ctx.presentDevices.get(client)
  if (deviceId === undefined || ctx.presence == null) return
  // A takeover (same client id reconnecting) closes the old session after the new one is
  // live: that is not a disconnect of the device.
  const current = ctx.clientById(deviceId)
  if (current !== undefined && current !== client) return
  ctx.presence.disconnected(deviceId)
}

/** The device registry's credentials-revoked event. */
export function credentialRevoked (ctx: DeviceSessionContext, deviceId: string): void {
  const client = ctx.clientById(deviceId)
  if (client !== undefined) {
    ctx.log.info({ deviceId }, 'credential revoked: closing session')
    // Forget the session first: closing publishes the client's Will, which must not be
    // ingested on the strength of a revoked credential.
    ctx.deviceSessions.delete(client)
    client.close()
  }
}

/**
 * Every device session's credential checked again (a revocation in another process was
 * announced while Redis was down, so this process never heard of it). Resolves with how many
 * sessions were closed; a session whose check fails (Postgres down) stays.
 */
export async function recheckDeviceCredentials (ctx: DeviceSessionContext, clients: readonly Client[]): Promise<number> {
  let closed = 0
  await Promise.all(clients.map(async (client) => {
    const session = ctx.deviceSessions.get(client)
    if (session === undefined) return
    const active = await ctx.devices.isCredentialActive(session.credentialId).catch(() => true)
    if (active || ctx.deviceSessions.get(client) !== session) return
    ctx.deviceSessions.delete(client)
    client.close()
    closed++
  }))
  return closed
}
