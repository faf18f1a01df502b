import { hkdfSync } from 'node:crypto'
import { inspect } from 'node:util'
import { KEY_ID, createKeyring } from './field-encryption.ts'
import type { Keyring } from './field-encryption.ts'

/**
 * The field-encryption keyring from configuration. Three forms, one result:
 *
 *  - VIGIL_SECRET_KEY=<base64 of 32 bytes>: one key, id `k1`.
 *  - VIGIL_SECRET_KEY=k2:<base64>,k1:<base64>[,index:<base64>]: several keys, the first is active.
 *  - VIGIL_SECRET_KEY_FILE: JSON `{"activeKeyId": "k2", "keys": {"k2": "<base64>", …}, "blindIndexKey": "<base64>"}`
 *    (the embedded default writes this form into the data directory).
 *
 * The blind-index root is derived from `index` / `blindIndexKey`, or from the only key when
 * there is one and no index key is given. It never follows the active key: lookups must keep
 * working across rotations, so with several keys it must be named.
 */

/** A key's parse failure, phrased to follow the variable's name ("VIGIL_SECRET_KEY …"). Never quotes key material. */
export class SecretKeyFormatError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'SecretKeyFormatError'
  }
}

// Standard or URL-safe alphabet, optional padding.
const BASE64 = /^[A-Za-z0-9+/_-]+={0,2}$/

/** `subject` prefixes the message ('' for the variable itself, `key "k2" ` for an entry). */
function key (text: string, subject: string): Buffer {
  const trimmed = text.trim()
  if (!BASE64.test(trimmed)) throw new SecretKeyFormatError(`${subject}is not base64 (generate one with \`openssl rand -base64 32\`)`)
  const bytes = Buffer.from(trimmed.replace(/-/g, '+').replace(/_/g, '/'), 'base64')
  if (bytes.length !== 32) throw new SecretKeyFormatError(`${subject}must be 32 bytes of base64 (got ${bytes.length} bytes; generate one with \`openssl rand -base64 32\`)`)
  return bytes
}

/** The blind-index root from the configured index key (or single data key): a separate HKDF output, never the key itself. */
function indexRoot (source: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', source, Buffer.alloc(0), 'vigil/blind-index-root/v1', 32))
}

function build (entries: Array<[string, Buffer]>, active: string, index: Buffer | null): Keyring {
  const keys = new Map<string, Buffer>()
  for (const [id, bytes] of entries) {
    if (!KEY_ID.test(id)) throw new SecretKeyFormatError(`has a key id "${id.slice(0, 40)}" that is not 1–32 of A–Z a–z 0–9 _ -`)
    if (keys.has(id)) throw new SecretKeyFormatError(`names key id "${id}" twice`)
    keys.set(id, bytes)
  }
  if (keys.size === 0) throw new SecretKeyFormatError('holds no key')
  if (!keys.has(active)) throw new SecretKeyFormatError(`names active key "${active.slice(0, 40)}", which is not among its keys`)
  if (index === null && keys.size > 1) {
    throw new SecretKeyFormatError('holds several keys but no blind-index key: add index:<base64> (VIGIL_SECRET_KEY) or "blindIndexKey" (file), ' +
      'the key the medical-card index was built with — your first key if you started with a single one')
  }
  return hideKeyMaterial(createKeyring(active, keys, indexRoot(index ?? keys.get(active)!)))
}

/** VIGIL_SECRET_KEY's value. */
export function parseSecretKeyValue (value: string): Keyring {
  if (!value.includes(':')) return build([['k1', key(value, '')]], 'k1', null)
  const entries: Array<[string, Buffer]> = []
  let index: Buffer | null = null
  for (const part of value.split(',')) {
    const at = part.indexOf(':')
    if (at <= 0) throw new SecretKeyFormatError('must be base64 of 32 bytes, or a list id:<base64>,id:<base64> with the active key first')
    const id = part.slice(0, at).trim()
    const bytes = key(part.slice(at + 1), `key "${id.slice(0, 40)}" `)
    if (id === 'index') {
      if (index !== null) throw new SecretKeyFormatError('names the index key twice')
      index = bytes
    } else {
      entries.push([id, bytes])
    }
  }
  if (entries.length === 0) throw new SecretKeyFormatError('holds no data key (only an index key)')
  return build(entries, entries[0]![0], index)
}

/** The JSON keyring file's contents (VIGIL_SECRET_KEY_FILE, and the embedded default). */
export function parseSecretKeyFile (text: string): Keyring {
  let doc: unknown
  try {
    doc = JSON.parse(text)
  } catch {
    throw new SecretKeyFormatError('is not JSON ({"activeKeyId": "k1", "keys": {"k1": "<base64>"}, "blindIndexKey": "<base64>"})')
  }
  const d = doc as { activeKeyId?: unknown, keys?: unknown, blindIndexKey?: unknown }
  if (typeof d !== 'object' || d === null || typeof d.activeKeyId !== 'string' || typeof d.keys !== 'object' || d.keys === null || Array.isArray(d.keys)) {
    throw new SecretKeyFormatError('must be {"activeKeyId": "<id>", "keys": {"<id>": "<base64>", …}, "blindIndexKey": "<base64>"}')
  }
  const entries: Array<[string, Buffer]> = []
  for (const [id, value] of Object.entries(d.keys as Record<string, unknown>)) {
    if (typeof value !== 'string') throw new SecretKeyFormatError(`key "${id.slice(0, 40)}" must be a base64 string`)
    entries.push([id, key(value, `key "${id.slice(0, 40)}" `)])
  }
  let index: Buffer | null = null
  if (d.blindIndexKey !== undefined) {
    if (typeof d.blindIndexKey !== 'string') throw new SecretKeyFormatError('blindIndexKey must be a base64 string')
    index = key(d.blindIndexKey, 'blindIndexKey ')
  }
  return build(entries, d.activeKeyId, index)
}

/** A keyring file holding fresh random keys (the embedded default), as its JSON text. */
export function newSecretKeyFile (dataKey: Buffer, indexKey: Buffer): string {
  return JSON.stringify({ activeKeyId: 'k1', keys: { k1: dataKey.toString('base64') }, blindIndexKey: indexKey.toString('base64') }, null, 2) + '\n'
}

/**
 * Config objects end up in debuggers, test output and careless logs: a keyring prints as its
 * key ids only.
 */
function hideKeyMaterial (keyring: Keyring): Keyring {
  const shown = (): object => ({ activeKeyId: keyring.activeKeyId, keyIds: [...keyring.keys.keys()] })
  Object.defineProperty(keyring, 'toJSON', { value: shown, enumerable: false })
  Object.defineProperty(keyring, inspect.custom, { value: shown, enumerable: false })
  return keyring
}
