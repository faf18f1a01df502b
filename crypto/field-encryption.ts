import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes } from 'node:crypto'
import { VigilError } from '../errors/catalogue.ts'

/**
 * Application-level field encryption for PHI at rest: AES-256-GCM with a random 96-bit IV per
 * value and the value's place (table, column, row id) as additional authenticated data, so a
 * ciphertext copied to another row or column fails to decrypt instead of being read as that
 * row's data. Pure functions of their inputs; keys come from the caller.
 */

/** Key ids are written into every envelope, so they may not contain the separator. */
export const KEY_ID = /^[A-Za-z0-9_-]{1,32}$/
const KEY_BYTES = 32
// NIST SP 800-38D §8.2: 96-bit IVs; with random IVs, at most 2^32 encryptions per key.
const IV_BYTES = 12
const TAG_BYTES = 16
const ENVELOPE_VERSION = 'v1'

export interface Keyring {
  /** New values are encrypted under this key. */
  readonly activeKeyId: string
  /** Every key that may still be needed to read: the active one and retired ones not yet re-encrypted away. */
  readonly keys: ReadonlyMap<string, Buffer>
  /**
   * Root of the blind-index keys. Independent of the data keys, so rotating those leaves
   * every index (and every lookup) as it was.
   */
  readonly blindIndexKey: Buffer
}

/** Where a value lives; bound to its ciphertext as additional authenticated data. */
export interface FieldLocation {
  table: string
  column: string
  rowId: string
}

/**
 * A ciphertext names a key id the keyring does not hold. Its message names the key id: the
 * API answers with a fixed one (api/plugins/error-handler.ts).
 */
export class UnknownKeyError extends VigilError {
  constructor (readonly keyId: string) {
    super('VIGIL_ERR_KEY_UNAVAILABLE', `no key with id "${keyId}" is configured`)
    this.name = 'UnknownKeyError'
  }
}

/**
 * A ciphertext that does not decrypt: tampered, truncated, or moved from another row or
 * column. Never carries the value or the ciphertext.
 */
export class DecryptionError extends VigilError {
  constructor (readonly reason: 'malformed' | 'authentication_failed') {
    super('VIGIL_ERR_DECRYPTION_FAILED', reason === 'malformed' ? 'the stored value is not a v1 field envelope' : 'the stored value failed authentication (tampered, or moved from another row or column)')
    this.name = 'DecryptionError'
  }
}

/** Checks a keyring's shape once, where it is built, so encrypt/decrypt can trust it. */
export function createKeyring (activeKeyId: string, keys: ReadonlyMap<string, Buffer>, blindIndexKey: Buffer): Keyring {
  for (const [id, key] of keys) {
    if (!KEY_ID.test(id)) throw new Error(`key id "${id}" must match ${KEY_ID.source}`)
    if (key.length !== KEY_BYTES) throw new Error(`key "${id}" must be ${KEY_BYTES} bytes (got ${key.length})`)
  }
  if (!keys.has(activeKeyId)) throw new Error(`the active key id "${activeKeyId}" is not among the keys`)
  if (blindIndexKey.length !== KEY_BYTES) throw new Error(`the blind index key must be ${KEY_BYTES} bytes (got ${blindIndexKey.length})`)
  return { activeKeyId, keys, blindIndexKey }
}

function additionalData (keyId: string, at: FieldLocation): Buffer {
  // Length-prefixed parts: "a|bc" and "ab|c" must not give the same bytes.
  const parts = [ENVELOPE_VERSION, keyId, at.table, at.column, at.rowId]
  return Buffer.concat(parts.map((p) => {
    const bytes = Buffer.from(p, 'utf8')
    const length = Buffer.alloc(4)
    length.writeUInt32BE(bytes.length)
    return Buffer.concat([length, bytes])
  }))
}

/** AES-256-GCM under the active key with a fresh IV; the text and binary envelopes both carry its parts. */
function seal (keyring: Keyring, plaintext: Buffer, at: FieldLocation): { keyId: string, iv: Buffer, body: Buffer } {
  const keyId = keyring.activeKeyId
  const key = keyring.keys.get(keyId)!
  const iv = randomBytes(IV_BYTES)
  const cipher = createCipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES })
  cipher.setAAD(additionalData(keyId, at))
  return { keyId, iv, body: Buffer.concat([cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]) }
}

/** The plaintext of `body` (ciphertext‖tag), or UnknownKeyError / DecryptionError: never a wrong value. */
function open (keyring: Keyring, keyId: string, iv: Buffer, body: Buffer, at: FieldLocation): Buffer {
  const key = keyring.keys.get(keyId)
  if (key === undefined) throw new UnknownKeyError(keyId)
  if (iv.length !== IV_BYTES || body.length < TAG_BYTES) throw new DecryptionError('malformed')
  const decipher = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES })
  decipher.setAAD(additionalData(keyId, at))
  decipher.setAuthTag(body.subarray(body.length - TAG_BYTES))
  try {
    return Buffer.concat([decipher.update(body.subarray(0, body.length - TAG_BYTES)), decipher.final()])
  } catch {
    throw new DecryptionError('authentication_failed')
  }
}

/** `v1.<keyId>.<iv>.<ciphertext‖tag>` (base64url), encrypted under the active key. */
export function encryptField (keyring: Keyring, plaintext: string, at: FieldLocation): string {
  const { keyId, iv, body } = seal(keyring, Buffer.from(plaintext, 'utf8'), at)
  return `${ENVELOPE_VERSION}.${keyId}.${iv.toString('base64url')}.${body.toString('base64url')}`
}

/** The key id an envelope was written under (without decrypting it). */
export function envelopeKeyId (envelope: string): string {
  const parts = envelope.split('.')
  if (parts.length !== 4 || parts[0] !== ENVELOPE_VERSION || !KEY_ID.test(parts[1]!)) throw new DecryptionError('malformed')
  return parts[1]!
}

/** The plaintext, or UnknownKeyError / DecryptionError: never a wrong value. */
export function decryptField (keyring: Keyring, envelope: string, at: FieldLocation): string {
  const keyId = envelopeKeyId(envelope)
  const [, , ivText, bodyText] = envelope.split('.') as [string, string, string, string]
  return open(keyring, keyId, Buffer.from(ivText, 'base64url'), Buffer.from(bodyText, 'base64url'), at).toString('utf8')
}

/**
 * Binary values (audio): `v1` | u8 key id length | key id | IV | ciphertext‖tag, with the
 * same key, IV and additional data rules as encryptField.
 */
export function encryptBytes (keyring: Keyring, plaintext: Buffer, at: FieldLocation): Buffer {
  const { keyId, iv, body } = seal(keyring, plaintext, at)
  const id = Buffer.from(keyId, 'utf8')
  return Buffer.concat([Buffer.from(ENVELOPE_VERSION, 'ascii'), Buffer.from([id.length]), id, iv, body])
}

/** The key id a binary envelope was written under (without decrypting it). */
export function bytesKeyId (envelope: Buffer): string {
  if (envelope.length < 3 || envelope.toString('ascii', 0, 2) !== ENVELOPE_VERSION) throw new DecryptionError('malformed')
  const keyId = envelope.toString('utf8', 3, 3 + envelope[2]!)
  if (!KEY_ID.test(keyId)) throw new DecryptionError('malformed')
  return keyId
}

/** The plaintext bytes, or UnknownKeyError / DecryptionError: never wrong bytes. */
export function decryptBytes (keyring: Keyring, envelope: Buffer, at: FieldLocation): Buffer {
  const keyId = bytesKeyId(envelope)
  const start = 3 + envelope[2]!
  return open(keyring, keyId, envelope.subarray(start, start + IV_BYTES), envelope.subarray(start + IV_BYTES), at)
}

/** Normalizes an identifier before hashing: the lookup must match however it was typed. */
export function normalizeForIndex (value: string): string {
  // NFKC folds compatibility forms (full-width digits); spaces and dashes are formatting only.
  return value.normalize('NFKC').replace(/[\s-]+/g, '').toUpperCase()
}

/**
 * A keyed blind index: HMAC-SHA256 of the normalized value under a key derived (RFC 5869
 * HKDF) from the blind-index root for this purpose, so indexes of different fields cannot be
 * joined and an index is useless without the key. Only this digest is stored.
 */
export function blindIndex (keyring: Keyring, purpose: string, value: string): Buffer {
  const key = Buffer.from(hkdfSync('sha256', keyring.blindIndexKey, Buffer.alloc(0), `vigil/blind-index/v1/${purpose}`, KEY_BYTES))
  return createHmac('sha256', key).update(normalizeForIndex(value), 'utf8').digest()
}

/** A new random 256-bit key. */
export function newKey (): Buffer {
  return randomBytes(KEY_BYTES)
}
