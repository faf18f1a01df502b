import { randomUUID, timingSafeEqual } from 'node:crypto'
import type { EventEmitter } from 'node:events'
import type pg from 'pg'
import { hashSecret, newSecret, sha256, verifySecret } from '../crypto/secrets.ts'
import { inTransaction } from '../store/database.ts'
import { UnknownDeviceError } from './device-errors.ts'

interface VerifiedSecret { credentialId: string, digest: Buffer }

/**
 * Devices' MQTT credentials: one active secret per device (scrypt-hashed). Keeps the digest
 * of the last secret that passed scrypt per device, so a reconnecting device skips scrypt.
 * Emits `credentials-revoked` (deviceId) on `events` when a device's sessions must end.
 */
export function createDeviceCredentials (pool: pg.Pool, events: EventEmitter, announceRevoked: (deviceId: string) => Promise<void> = async () => {}) {
  const verified = new Map<string, VerifiedSecret>()

  return {
    /** Another process revoked the device's credential: its sessions here end too. */
    credentialRevokedElsewhere (deviceId: string): void {
      verified.delete(deviceId)
      events.emit('credentials-revoked', deviceId)
    },

    /** Drops every verified secret (changes may have been missed). */
    forgetVerified (): void {
      verified.clear()
    },

    /** Issues a new MQTT secret, revoking the previous one (whose live sessions are ended). */
    async rotateCredential (deviceId: string): Promise<{ username: string, password: string }> {
      const password = newSecret('vgl')
      const hash = await hashSecret(password)
      const revoked = await inTransaction(pool, async (client) => {
        const device = await client.query('SELECT id FROM devices WHERE id = $1 FOR UPDATE', [deviceId])
        if (device.rowCount === 0) throw new UnknownDeviceError()
        const r = await client.query(
          'UPDATE device_credentials SET revoked_at = now() WHERE device_id = $1 AND revoked_at IS NULL', [deviceId])
        await client.query('INSERT INTO device_credentials (id, device_id, secret_hash) VALUES ($1, $2, $3)',
          [randomUUID(), deviceId, hash])
        return (r.rowCount ?? 0) > 0
      })
      verified.delete(deviceId)
      if (revoked) {
        events.emit('credentials-revoked', deviceId)
        await announceRevoked(deviceId)
      }
      return { username: deviceId, password }
    },

    /** Revokes the device's credential; returns false when it had none. */
    async revokeCredential (deviceId: string): Promise<boolean> {
      const r = await pool.query(
        'UPDATE device_credentials SET revoked_at = now() WHERE device_id = $1 AND revoked_at IS NULL', [deviceId])
      verified.delete(deviceId)
      const revoked = (r.rowCount ?? 0) > 0
      if (revoked) {
        events.emit('credentials-revoked', deviceId)
        await announceRevoked(deviceId)
      }
      return revoked
    },

    /** Checks an MQTT username/password. Returns the credential id, or null. */
    async authenticate (deviceId: string, password: string): Promise<string | null> {
      const digest = sha256(password)
      const known = verified.get(deviceId)
      if (known !== undefined && timingSafeEqual(known.digest, digest)) {
        // Revocation clears the cache, but a revocation done by another instance would not:
        // confirm the credential is still active (one indexed lookup, no scrypt). With Postgres
        // unreachable no revocation can happen either, so the verified secret stands and the
        // device can reconnect through a database outage.
        const still = await pool.query('SELECT 1 FROM device_credentials WHERE id = $1 AND revoked_at IS NULL', [known.credentialId])
          .catch(() => null)
        if (still === null || still.rowCount === 1) return known.credentialId
        verified.delete(deviceId)
        return null
      }
      const { rows } = await pool.query(
        'SELECT id, secret_hash FROM device_credentials WHERE device_id = $1 AND revoked_at IS NULL', [deviceId])
      const row = rows[0]
      if (row === undefined) return null
      if (!(await verifySecret(password, row.secret_hash))) return null
      verified.set(deviceId, { credentialId: row.id, digest })
      return row.id as string
    },

    /** Whether a credential is still active (for sessions to re-check). */
    async isCredentialActive (credentialId: string): Promise<boolean> {
      const r = await pool.query('SELECT 1 FROM device_credentials WHERE id = $1 AND revoked_at IS NULL', [credentialId])
      return r.rowCount === 1
    }
  }
}
