import type { AuthenticateError, Client } from 'aedes'
import type { Logger } from 'pino'
import type { Principal } from '../access/auth.ts'
import type { DeviceRegistry } from '../devices/device-registry.ts'
import type { AddressGuard } from './address-guard.ts'
import { beginConnect, clientIdAccepted, type ConnectContext } from './connect.ts'
import { BEARER_USERNAME, type AlertSubscriberAuth } from './options.ts'
import { openPersonSession, type PeopleSessions } from './people-sessions.ts'
import type { RefusalReason } from './refusal-reasons.ts'
import { DEVICE_ID, type DeviceSessions } from './shared.ts'

// Who a client is: a device (its id and secret, and with mutual TLS its certificate) or a
// person (username `bearer`, an API token), and the login budget that locks out an address
// guessing credentials.

// Credentials refused for these reasons count towards an address's lockout: each is a guess at
// a device id or secret. Anonymous and malformed CONNECTs cost no credential check; the
// connection rate limit bounds them.
const CREDENTIAL_FAILURES: ReadonlySet<RefusalReason> = new Set(['username_invalid', 'client_id_mismatch', 'certificate_mismatch', 'bad_credentials'])

export interface LoginBudgetContext {
  guard: AddressGuard
  lockoutMs: number
  log: Logger
}

/** Counts a refused credential against its address; logs when that starts a lockout. */
export function countCredentialFailure (ctx: LoginBudgetContext, reason: RefusalReason, remoteAddress: string | undefined): void {
  if (CREDENTIAL_FAILURES.has(reason) && ctx.guard.recordAuthFailure(remoteAddress ?? '')) {
    ctx.log.warn({ remoteAddress, lockoutSeconds: ctx.lockoutMs / 1000 }, 'address locked out after repeated refused credentials')
  }
}

/** Whose a person's MQTT client ids are: the user, or the API token when no user stands behind it. */
function ownerOf (principal: Principal): string {
  return principal.userId ?? principal.tokenId
}

export interface AuthenticateContext {
  connect: ConnectContext
  guard: AddressGuard
  devices: Pick<DeviceRegistry, 'authenticate'>
  deviceSessions: DeviceSessions
  /** Without it, `bearer` is just an invalid device username. */
  alertSubscribers: AlertSubscriberAuth | null | undefined
  people: PeopleSessions
}

/** Aedes' authenticate. */
export function authenticate (ctx: AuthenticateContext, client: Client, username: string | undefined, password: Buffer | undefined, answer: (error: AuthenticateError | null, success: boolean | null) => void): void {
  const attempt = beginConnect(ctx.connect, client, username, answer)
  if (!clientIdAccepted(attempt)) return
  const { info, sent } = attempt
  // Locked out: refused without looking at the credential (no database query, no scrypt).
  if (ctx.guard.lockedOut(info?.remoteAddress ?? '')) return attempt.refuse('locked_out', 5)
  if (username === undefined || password === undefined) return attempt.refuse('anonymous', 5)
  if (username === BEARER_USERNAME && ctx.alertSubscribers != null) {
    // A person's client id must not look like a device id: taking it over would
    // disconnect that device (MQTT-3.1.4-2).
    if (DEVICE_ID.test(sent.clientId)) return attempt.refuse('client_id_invalid', 2)
    ctx.alertSubscribers.authenticate(password.toString('utf8')).then((principal) => {
      if (attempt.settled) return
      if (principal === null || !principal.permissions.has('alerts:read')) return attempt.refuse('bad_credentials', 5, { person: true })
      // A person's client id is theirs: `{userId}-{anything}` (an API token: `{tokenId}-…`).
      // Only its owner can then take over a live session with it (MQTT-3.1.4-2 closes the
      // older one) or resume a persistent one with its queued alerts.
      const owner = ownerOf(principal)
      if (!sent.clientId.startsWith(`${owner}-`) || sent.clientId.length === owner.length + 1) {
        return attempt.refuse('client_id_not_owned', 2, { person: true, userId: principal.userId })
      }
      openPersonSession(ctx.people, client, principal, password.toString('utf8'))
      attempt.accept()
    }, (err: Error) => attempt.refuse('auth_unavailable', 3, { person: true, err }))
    return
  }
  if (!DEVICE_ID.test(username)) return attempt.refuse('username_invalid', 5)
  if (sent.clientId !== username) return attempt.refuse('client_id_mismatch', 5, { deviceId: username })
  // Mutual TLS: the certificate names the device, and must name this one.
  if (info?.certificateCommonName !== undefined && info.certificateCommonName !== username) {
    return attempt.refuse('certificate_mismatch', 5, { deviceId: username })
  }
  ctx.devices.authenticate(username, password.toString('utf8')).then((credentialId) => {
    if (attempt.settled) return
    if (credentialId === null) return attempt.refuse('bad_credentials', 5, { deviceId: username })
    ctx.deviceSessions.set(client, { deviceId: username, credentialId })
    attempt.accept()
  }, (err: Error) => {
    // CONNACK 3: the device should retry later; its credential was not judged.
    attempt.refuse('auth_unavailable', 3, { deviceId: username, err })
  })
}
