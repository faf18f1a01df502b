import { randomBytes } from 'node:crypto'
import { inspect } from 'node:util'
import t from 'tap'
import { parseSecretKeyFile, parseSecretKeyValue, SecretKeyFormatError } from '../../crypto/secret-keys.ts'
import {
  DecryptionError, UnknownKeyError, blindIndex, createKeyring, decryptField, encryptField, envelopeKeyId, normalizeForIndex
} from '../../crypto/field-encryption.ts'
import { randomKeys, secretKeyValue, testKeyring } from '../helpers/keys.ts'

const here = { table: 'patient_records', column: 'date_of_birth_enc', rowId: '11111111-1111-4111-8111-111111111111' }

t.test('round trip, with a fresh IV every time', async (t) => {
  const keyring = testKeyring(['k1'])
  for (const value of ['1984-02-29', '', 'Zoë 🩺 "quoted" ,.:', 'x'.repeat(10_000)]) {
    const a = encryptField(keyring, value, here)
    const b = encryptField(keyring, value, here)
    t.not(a, b, 'same value, different ciphertexts')
    t.match(a, /^v1\.k1\.[A-Za-z0-9_-]{16}\.[A-Za-z0-9_-]+$/)
    t.equal(decryptField(keyring, a, here), value)
    t.notOk(a.includes(value) && value !== '', 'no plaintext in the envelope')
  }
})

t.test('a ciphertext moved to another row, column or table fails to decrypt', async (t) => {
  const keyring = testKeyring(['k1'])
  const envelope = encryptField(keyring, 'CANARY', here)
  const elsewhere = [
    { ...here, rowId: '22222222-2222-4222-8222-222222222222' },
    { ...here, column: 'addresses_enc' },
    { ...here, table: 'other_table' },
    // Length-prefixed AAD: shifting a character between parts does not collide.
    { table: 'patient_record', column: 'sdate_of_birth_enc', rowId: here.rowId }
  ]
  for (const at of elsewhere) {
    t.throws(() => decryptField(keyring, envelope, at), DecryptionError, JSON.stringify(at))
  }
})

t.test('tampering and malformed envelopes are typed errors, never garbage', async (t) => {
  const keyring = testKeyring(['k1'])
  const envelope = encryptField(keyring, 'CANARY-VALUE', here)
  const [v, id, iv, body] = envelope.split('.') as [string, string, string, string]
  const flip = (text: string, at: number): string => {
    const bytes = Buffer.from(text, 'base64url')
    bytes[at] = bytes[at]! ^ 1
    return bytes.toString('base64url')
  }
  const bodyBytes = Buffer.from(body, 'base64url').length
  const cases: Array<[string, string, 'malformed' | 'authentication_failed']> = [
    ['tag bit flipped', `${v}.${id}.${iv}.${flip(body, bodyBytes - 1)}`, 'authentication_failed'],
    ['ciphertext bit flipped', `${v}.${id}.${iv}.${flip(body, 0)}`, 'authentication_failed'],
    ['iv bit flipped', `${v}.${id}.${flip(iv, 0)}.${body}`, 'authentication_failed'],
    ['truncated body', `${v}.${id}.${iv}.${body.slice(0, 8)}`, 'malformed'],
    ['short iv', `${v}.${id}.AAAA.${body}`, 'malformed'],
    ['unknown version', `v9.${id}.${iv}.${body}`, 'malformed'],
    ['missing part', `${v}.${id}.${iv}`, 'malformed'],
    ['plain text', 'CANARY-VALUE', 'malformed']
  ]
  for (const [name, bad, reason] of cases) {
    const err = t.throws(() => decryptField(keyring, bad, here), DecryptionError, name) as unknown as DecryptionError
    t.equal(err.reason, reason, name)
    t.notMatch(err.message, /CANARY/, `${name}: message carries no value`)
  }
})

t.test('a key id the keyring lacks is UnknownKeyError; the same key under another id does not decrypt', async (t) => {
  const keys = randomKeys('k1', 'k2')
  const index = randomBytes(32)
  const old = createKeyring('k1', keys, index)
  const envelope = encryptField(old, 'value', here)
  const withoutK1 = createKeyring('k2', new Map([['k2', keys.get('k2')!]]), index)
  const err = t.throws(() => decryptField(withoutK1, envelope, here), UnknownKeyError) as unknown as UnknownKeyError
  t.equal(err.keyId, 'k1')
  // The key id is authenticated: relabelling the envelope to another key's id fails.
  const relabelled = createKeyring('k2', new Map([['k2', keys.get('k1')!]]), index)
  t.throws(() => decryptField(relabelled, envelope.replace('.k1.', '.k2.'), here), DecryptionError)
  t.equal(envelopeKeyId(envelope), 'k1')
})

t.test('rotation: new writes use the new key, old ciphertexts stay readable while the old key is kept', async (t) => {
  const keys = randomKeys('k1', 'k2')
  const index = randomBytes(32)
  const before = createKeyring('k1', keys, index)
  const after = createKeyring('k2', keys, index)
  const old = encryptField(before, 'value', here)
  t.equal(decryptField(after, old, here), 'value')
  t.equal(envelopeKeyId(encryptField(after, 'value', here)), 'k2')
})

t.test('blind index: stable across data-key rotation, normalized, keyed, per purpose', async (t) => {
  const keys = randomKeys('k1', 'k2')
  const index = randomBytes(32)
  const before = createKeyring('k1', keys, index)
  const after = createKeyring('k2', new Map([['k2', keys.get('k2')!]]), index)
  const digest = blindIndex(before, 'card', 'AB-123 456')
  t.equal(digest.length, 32)
  t.same(blindIndex(after, 'card', 'AB-123 456'), digest, 'same after rotating data keys')
  t.same(blindIndex(before, 'card', ' ab123456 '), digest, 'case, spaces and dashes do not matter')
  t.same(blindIndex(before, 'card', 'ＡＢ１２３４５６'), digest, 'full-width forms fold (NFKC)')
  t.notSame(blindIndex(before, 'card', 'AB123457'), digest)
  t.notSame(blindIndex(before, 'other', 'AB123456'), digest, 'another purpose, another key')
  t.notSame(blindIndex(createKeyring('k1', keys, randomBytes(32)), 'card', 'AB123456'), digest, 'another index key, another digest')
  t.equal(normalizeForIndex(' ab-12 3 '), 'AB123')
})

t.test('keyring construction refuses bad shapes', async (t) => {
  t.throws(() => createKeyring('k1', new Map([['k1', randomBytes(16)]]), randomBytes(32)), /32 bytes/)
  t.throws(() => createKeyring('k9', randomKeys('k1'), randomBytes(32)), /active key id/)
  t.throws(() => createKeyring('k.1', randomKeys('k.1'), randomBytes(32)), /key id/)
  t.throws(() => createKeyring('k1', randomKeys('k1'), randomBytes(31)), /blind index key/)
})

t.test('VIGIL_SECRET_KEY forms', async (t) => {
  const k1 = randomBytes(32)
  const k2 = randomBytes(32)
  const single = parseSecretKeyValue(k1.toString('base64'))
  t.equal(single.activeKeyId, 'k1')
  t.same(single.keys.get('k1'), k1)
  t.same(parseSecretKeyValue(k1.toString('base64url')).keys.get('k1'), k1, 'URL-safe base64 too')

  const rotated = parseSecretKeyValue(secretKeyValue([['k2', k2], ['k1', k1]], k1))
  t.equal(rotated.activeKeyId, 'k2', 'the first key is active')
  t.same([...rotated.keys.keys()], ['k2', 'k1'])
  t.same(blindIndex(rotated, 'card', 'X1'), blindIndex(single, 'card', 'X1'), 'index:<first key> keeps the single-key index')

  const file = parseSecretKeyFile(JSON.stringify({ activeKeyId: 'k2', keys: { k1: k1.toString('base64'), k2: k2.toString('base64') }, blindIndexKey: k1.toString('base64') }))
  t.equal(file.activeKeyId, 'k2')
  t.same(blindIndex(file, 'card', 'X1'), blindIndex(single, 'card', 'X1'))

  t.notMatch(JSON.stringify({ keyring: rotated }), new RegExp(k1.toString('base64').slice(0, 12).replace(/[+/]/g, '.')), 'JSON shows no key material')
  t.notMatch(inspect(rotated), /Buffer|<[0-9a-f]{2} /, 'inspect shows no key material')
  t.match(JSON.stringify(rotated), /"activeKeyId":"k2"/)

  const bad: Array<[string, string, RegExp]> = [
    ['not base64', 'not base64 at all!', /not base64/],
    ['too short', randomBytes(16).toString('base64'), /32 bytes/],
    ['too long', randomBytes(33).toString('base64'), /32 bytes/],
    ['bad entry', `k1:${k1.toString('base64')},garbage`, /id:<base64>/],
    ['bad id', `k.1:${k1.toString('base64')}`, /key id/],
    ['duplicate id', `k1:${k1.toString('base64')},k1:${k2.toString('base64')}`, /twice/],
    ['several keys, no index', `k2:${k2.toString('base64')},k1:${k1.toString('base64')}`, /index/],
    ['only an index', `index:${k1.toString('base64')}`, /no data key/]
  ]
  for (const [name, value, message] of bad) {
    const err = t.throws(() => parseSecretKeyValue(value), SecretKeyFormatError, name) as unknown as Error
    t.match(err.message, message, name)
    t.notMatch(err.message, new RegExp(k1.toString('base64').slice(0, 12).replace(/[+/]/g, '.')), `${name}: no key material in the message`)
  }
  t.throws(() => parseSecretKeyFile('{'), /not JSON/)
  t.throws(() => parseSecretKeyFile('{"keys": {}}'), /activeKeyId/)
  t.throws(() => parseSecretKeyFile(JSON.stringify({ activeKeyId: 'k3', keys: { k1: k1.toString('base64') } })), /active key "k3"/)
})
