import { randomBytes } from 'node:crypto'
import { createKeyring } from '../../crypto/field-encryption.ts'
import type { Keyring } from '../../crypto/field-encryption.ts'

/** Fresh random 32-byte keys by id, for tests that build keyrings of their own. */
export function randomKeys (...ids: string[]): Map<string, Buffer> {
  return new Map(ids.map((id) => [id, randomBytes(32)]))
}

/** A keyring of random keys; the first id is active. */
export function testKeyring (ids: string[] = ['k1'], blindIndexKey: Buffer = randomBytes(32)): Keyring {
  return createKeyring(ids[0]!, randomKeys(...ids), blindIndexKey)
}

/** VIGIL_SECRET_KEY's keyring form: `id:<base64>,…`, first active, plus the index key. */
export function secretKeyValue (keys: Array<[string, Buffer]>, indexKey?: Buffer): string {
  return [...keys, ...(indexKey === undefined ? [] : [['index', indexKey] as [string, Buffer]])]
    .map(([id, key]) => `${id}:${key.toString('base64')}`).join(',')
}
