import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import t from 'tap'
import { blindIndex, decryptField, encryptField } from '../../crypto/field-encryption.ts'
import { EMBEDDED_KEY_FILE, openEmbeddedKeyring } from '../../crypto/embedded-keyring.ts'
import { createLogCapture } from '../helpers/log-capture.ts'

const at = { table: 'patient_records', column: 'billing_enc', rowId: 'row' }

t.test('the embedded default creates a private key file once, warns, and reuses it', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-keyring-'))
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const logs = createLogCapture()
  const log = pino({ level: 'info' }, logs.stream)

  const first = await openEmbeddedKeyring(dir, log)
  const file = path.join(dir, EMBEDDED_KEY_FILE)
  t.equal((await fs.stat(file)).mode & 0o777, 0o600, 'mode 0600')
  t.same((await fs.readdir(dir)).sort(), [EMBEDDED_KEY_FILE], 'no temporary file left behind')
  t.equal(first.activeKeyId, 'k1')
  const created = logs.lines.filter((l) => l.level === 40)
  t.equal(created.length, 1, 'one warning')
  t.match(created[0]!.msg, /production must supply its own key/)

  const again = await openEmbeddedKeyring(dir, log)
  t.equal(decryptField(again, encryptField(first, 'value', at), at), 'value', 'the second start reads what the first wrote')
  t.same(blindIndex(again, 'card', 'A1'), blindIndex(first, 'card', 'A1'), 'and has the same blind index')
  t.equal(logs.lines.filter((l) => l.level === 40).length, 2, 'it warns on every start')

  const text = await fs.readFile(file, 'utf8')
  const material = Object.values(JSON.parse(text).keys as Record<string, string>)
  t.notOk(logs.lines.some((l) => material.some((k) => JSON.stringify(l).includes(k))), 'no key material logged')
  t.not(JSON.parse(text).blindIndexKey, material[0], 'the index key is its own random key')

  await fs.writeFile(file, '{"activeKeyId": "k1", "keys": {"k1": "short"}}')
  await t.rejects(openEmbeddedKeyring(dir, log), /secret-keys\.json key "k1" must be 32 bytes/, 'a damaged file stops start-up, naming it')
})
